-- wrk script for bench/run.sh.
--
-- BENCH_TOKEN_MODE=fixed  (default) every request carries the same token,
--                         BENCH_TOKEN: the cache-hit scenario (wrk sends one
--                         pre-built request, the cheapest way it can).
-- BENCH_TOKEN_MODE=unique every request carries a token never sent before:
--                         BENCH_TOKEN .. "-" .. thread .. "-" .. counter, so the
--                         cache-miss scenario introspects on every request.
--
-- done() prints one machine-readable line that run.sh parses:
--   BENCH requests=N duration_us=N p50_us=N p99_us=N non2xx=N errors=N

local mode = os.getenv("BENCH_TOKEN_MODE") or "fixed"
local base = os.getenv("BENCH_TOKEN") or "bench-token"

local threads = {}
local next_id = 0

function setup(thread)
   thread:set("id", next_id)
   next_id = next_id + 1
   table.insert(threads, thread)
end

function init(args)
   if mode == "fixed" then
      wrk.headers["Authorization"] = "Bearer " .. base
   end
end

if mode == "unique" then
   local counter = 0
   request = function()
      counter = counter + 1
      return wrk.format(nil, nil, {
         ["Authorization"] = "Bearer " .. base .. "-" .. id .. "-" .. counter,
      })
   end
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      "BENCH requests=%d duration_us=%d p50_us=%d p99_us=%d non2xx=%d errors=%d\n",
      summary.requests, summary.duration,
      latency:percentile(50), latency:percentile(99),
      e.status, e.connect + e.read + e.write + e.timeout))
end
