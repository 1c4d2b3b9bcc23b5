-- bench/rest/history.lua - wrk: GET the newest 50 messages of a random channel.
package.path = os.getenv("BENCH_DIR") .. "/?.lua;" .. package.path
local common = require("common")

request = function()
  return wrk.format("GET", "/api/v1/workspaces/1/channels/" .. math.random(1, common.channels)
    .. "/messages?limit=50", {["Authorization"] = "Bearer " .. common.token()})
end

response = common.expect(200)
