"""Redis Lua scripts, one per file, shipped as package data (``gateway.lua``)."""
