"""The Lua scripts behind cluster presence, each one atomic in Redis.

Keys, under the cluster prefix: ``nodes`` (a sorted set: node -> time of its last beat, by
Redis's clock), ``unodes:<user>`` (the nodes holding the user) and ``nusers:<node>`` (the
users a node holds); for rooms, ``room:<room>`` (the socket ids in the room) and
``nrooms:<node>`` (the node's memberships, each ``"<socket id> <room>"``, so that the
memberships of a node that died can be taken out of the rooms).
"""

__all__ = [
    "BEAT",
    "FORGET_ROOMS",
    "IS_ONLINE",
    "JOIN",
    "LEAVE",
    "ONLINE_USERS",
    "REAP",
    "ROOM_MEMBERS",
]

_NOW = "local t = redis.call('TIME') local now = tonumber(t[1]) + tonumber(t[2]) / 1e6 "

# Returns 1 when the node was not listed: new, or reaped while it was paused or cut off.
BEAT = _NOW + "return redis.call('ZADD', KEYS[1], now, ARGV[1])"

# Both return 1 only when this call changed the user's presence for the whole cluster
# (first node to hold them / last node to let go), so a repeated call never repeats an event.
JOIN = """
redis.call('SADD', KEYS[2], ARGV[2])
if redis.call('SADD', KEYS[1], ARGV[1]) == 0 then return 0 end
if redis.call('SCARD', KEYS[1]) == 1 then return 1 end
return 0
"""

LEAVE = """
redis.call('SREM', KEYS[2], ARGV[2])
if redis.call('SREM', KEYS[1], ARGV[1]) == 0 then return 0 end
if redis.call('SCARD', KEYS[1]) == 0 then return 1 end
return 0
"""

# Takes every membership of one node out of its rooms: (prefix, node).
_DROP_ROOMS = """
local function drop_rooms(prefix, node)
  local key = prefix .. ':nrooms:' .. node
  for _, entry in ipairs(redis.call('SMEMBERS', key)) do
    local space = string.find(entry, ' ', 1, true)
    if space then
      redis.call('SREM', prefix .. ':room:' .. string.sub(entry, space + 1),
                 string.sub(entry, 1, space - 1))
    end
  end
  redis.call('DEL', key)
end
"""

# KEYS[1] = the node's nrooms set (for the record); ARGV[1] = prefix, ARGV[2] = node.
# A node leaving the cluster, or about to write all its memberships again.
FORGET_ROOMS = _DROP_ROOMS + "drop_rooms(ARGV[1], ARGV[2]) return 0"

# KEYS[1] = nodes zset; ARGV[1] = prefix, ARGV[2] = seconds after which a node is dead.
# Returns {users now offline, nodes still alive}.
REAP = (
    _NOW
    + _DROP_ROOMS
    + """
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - tonumber(ARGV[2])))
local offline = {}
for _, node in ipairs(dead) do
  local users = redis.call('SMEMBERS', ARGV[1] .. ':nusers:' .. node)
  for _, user in ipairs(users) do
    local key = ARGV[1] .. ':unodes:' .. user
    redis.call('SREM', key, node)
    if redis.call('SCARD', key) == 0 then table.insert(offline, user) end
  end
  redis.call('DEL', ARGV[1] .. ':nusers:' .. node)
  drop_rooms(ARGV[1], node)
  redis.call('ZREM', KEYS[1], node)
end
return {offline, redis.call('ZCARD', KEYS[1])}
"""
)

# KEYS[1] = nodes zset, KEYS[2] = the user's node set; ARGV[1] = seconds of life
IS_ONLINE = (
    _NOW
    + """
for _, node in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local beat = redis.call('ZSCORE', KEYS[1], node)
  if beat and tonumber(beat) > now - tonumber(ARGV[1]) then return 1 end
end
return 0
"""
)

# KEYS[1] = nodes zset; ARGV[1] = prefix, ARGV[2] = seconds of life
ONLINE_USERS = (
    _NOW
    + """
local seen, users = {}, {}
local alive = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. (now - tonumber(ARGV[2])), '+inf')
for _, node in ipairs(alive) do
  for _, user in ipairs(redis.call('SMEMBERS', ARGV[1] .. ':nusers:' .. node)) do
    if not seen[user] then seen[user] = true table.insert(users, user) end
  end
end
return users
"""
)

# KEYS[1] = nodes zset, KEYS[2] = the room's set; ARGV[1] = seconds of life, ARGV[2] = the
# length of a node id (a socket id starts with its node's). Members on live nodes only: a
# node that died is not yet reaped for up to a beat.
ROOM_MEMBERS = (
    _NOW
    + """
local alive = {}
local live = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. (now - tonumber(ARGV[1])), '+inf')
for _, node in ipairs(live) do alive[node] = true end
local members = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  if alive[string.sub(id, 1, tonumber(ARGV[2]))] then table.insert(members, id) end
end
return members
"""
)
