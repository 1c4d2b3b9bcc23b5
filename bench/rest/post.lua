-- bench/rest/post.lua - wrk: POST a message as a random bench user into a random channel.
-- tokens.txt ("id token" lines) and CHANNELS come from bench/rest/run.
local tokens = {}
for line in io.lines(os.getenv("BENCH_TOKENS")) do
  local _, tok = line:match("(%d+) (%S+)")
  tokens[#tokens + 1] = tok
end
local channels = tonumber(os.getenv("BENCH_CHANNELS"))
local body = '{"text":"a benchmark message of a typical length, about eighty characters long."}'
math.randomseed(os.time() + math.floor(os.clock() * 1000000))

request = function()
  local ch = math.random(1, channels)
  return wrk.format("POST", "/api/v1/workspaces/1/channels/" .. ch .. "/messages",
    {["Authorization"] = "Bearer " .. tokens[math.random(1, #tokens)],
     ["Content-Type"] = "application/json"}, body)
end

response = function(status)
  if status ~= 201 then
    io.stderr:write("unexpected status " .. status .. "\n")
  end
end
