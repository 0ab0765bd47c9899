-- wrk script: POST a different pre-generated JSON body (one per line of the file) each request,
-- and print the summary as one JSON line.  wrk ... -s bodies.lua URL -- bodies.jsonl [think_ms]
-- FRAUD_KEY in the environment: sent as a bearer key.
-- With think_ms, each connection waits a random (exponential) time of that mean before each
-- request: C connections then offer ~C * 1000 / think_ms req/s in unsynchronised arrivals
-- (close to Poisson while responses are fast), where hey's clients fire together.
local bodies = {}
local i = 0
local think_ms = nil
function init(args)
  for line in io.lines(args[1]) do bodies[#bodies + 1] = line end
  i = math.random(#bodies)
  think_ms = tonumber(args[2])
  math.randomseed(os.time() + i)
end
function delay()
  if think_ms == nil then return 0 end
  return math.floor(-math.log(1 - math.random()) * think_ms)
end
local headers = {["Content-Type"] = "application/json"}
if os.getenv("FRAUD_KEY") then headers["Authorization"] = "Bearer " .. os.getenv("FRAUD_KEY") end
function request()
  i = i % #bodies + 1
  return wrk.format("POST", nil, headers, bodies[i])
end
function done(summary, latency, requests)
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "non_2xx": %d, "socket_errors": %d, ' ..
    '"p50_ms": %.3f, "p95_ms": %.3f, "p99_ms": %.3f}\n',
    summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(95) / 1000, latency:percentile(99) / 1000))
end
