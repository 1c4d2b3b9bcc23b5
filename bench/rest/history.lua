-- bench/rest/history.lua - wrk: GET the newest 50 messages of a random channel.
local tokens = {}
for line in io.lines(os.getenv("BENCH_TOKENS")) do
  local _, tok = line:match("(%d+) (%S+)")
  tokens[#tokens + 1] = tok
end
local channels = tonumber(os.getenv("BENCH_CHANNELS"))
math.randomseed(os.time() + math.floor(os.clock() * 1000000))

request = function()
  local ch = math.random(1, channels)
  return wrk.format("GET", "/api/v1/workspaces/1/channels/" .. ch .. "/messages?limit=50",
    {["Authorization"] = "Bearer " .. tokens[math.random(1, #tokens)]})
end

response = function(status)
  if status ~= 200 then
    io.stderr:write("unexpected status " .. status .. "\n")
  end
end
