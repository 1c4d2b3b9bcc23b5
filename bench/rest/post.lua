-- bench/rest/post.lua - wrk: POST a message as a random bench user into a random channel.
package.path = os.getenv("BENCH_DIR") .. "/?.lua;" .. package.path
local common = require("common")
local body = '{"text":"a benchmark message of a typical length, about eighty characters long."}'

request = function()
  return wrk.format("POST", "/api/v1/workspaces/1/channels/" .. math.random(1, common.channels)
    .. "/messages", {["Authorization"] = "Bearer " .. common.token(),
                     ["Content-Type"] = "application/json"}, body)
end

response = common.expect(201)
