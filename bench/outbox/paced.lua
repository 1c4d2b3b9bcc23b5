-- bench/outbox/paced.lua - wrk: POST messages at a steady total rate. Each connection
-- waits BENCH_DELAY_MS between its requests, so the rate is about
-- connections * 1000 / (delay + latency); bench/outbox/run reports the rate achieved.
package.path = os.getenv("BENCH_DIR") .. "/../rest/?.lua;" .. package.path
local common = require("common")
local body = '{"text":"a benchmark message of a typical length, about eighty characters long."}'
local wait = tonumber(os.getenv("BENCH_DELAY_MS"))

request = function()
  return wrk.format("POST", "/api/v1/workspaces/1/channels/" .. math.random(1, common.channels)
    .. "/messages", {["Authorization"] = "Bearer " .. common.token(),
                     ["Content-Type"] = "application/json"}, body)
end

delay = function()
  return wait
end

response = common.expect(201)
