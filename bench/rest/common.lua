-- bench/rest/common.lua - what post.lua and history.lua share: the tokens ("id token"
-- lines of BENCH_TOKENS, from `chorus tokens`), the channel count, and a seeded random.
local common = {tokens = {}, channels = tonumber(os.getenv("BENCH_CHANNELS"))}
for line in io.lines(os.getenv("BENCH_TOKENS")) do
  local _, tok = line:match("(%d+) (%S+)")
  common.tokens[#common.tokens + 1] = tok
end
math.randomseed(os.time() + math.floor(os.clock() * 1000000))

function common.token()
  return common.tokens[math.random(1, #common.tokens)]
end

function common.expect(want)
  return function(status)
    if status ~= want then
      io.stderr:write("unexpected status " .. status .. "\n")
    end
  end
end

return common
