-- wrk script for the Headwater benches: every request carries fresh messageIds.
--
-- wrk -t T -c C -d D -s bench/wrk.lua http://127.0.0.1:PORT -- WORKLOAD.lua RUN_PREFIX
--
-- WORKLOAD.lua (written by bench/payloads.py) returns {path, headers, ids_per_request,
-- templates}; each template is the body cut at every messageId. A request glues one
-- template's pieces together with ids `{run}-{thread}-{slot}-8000-{counter}`, so no two
-- messages of a run share an id. Responses are counted by status; `done` prints one line
-- `WRKJSON {...}` that bench/harness.py parses.

local threads = {}
local next_thread = 0

function setup(thread)
  next_thread = next_thread + 1
  thread:set("tid", next_thread)
  table.insert(threads, thread)
end

local workload, run, counter, per, ntemplates

function init(args)
  workload = dofile(args[1])
  run = args[2]
  per = workload.ids_per_request
  ntemplates = #workload.templates
  counter = 0
  ok = 0
  not_ok = 0
end

function request()
  counter = counter + 1
  local pieces = workload.templates[(counter % ntemplates) + 1]
  local parts = {}
  for slot = 1, per do
    parts[2 * slot - 1] = pieces[slot]
    parts[2 * slot] = string.format("%s-%04x-%04x-8000-%012x", run, tid, slot, counter)
  end
  parts[2 * per + 1] = pieces[per + 1]
  return wrk.format("POST", workload.path, workload.headers, table.concat(parts))
end

function response(status, headers, body)
  if status == 200 then
    ok = ok + 1
  else
    not_ok = not_ok + 1
  end
end

function done(summary, latency, requests)
  local total_ok, total_not_ok = 0, 0
  for _, thread in ipairs(threads) do
    total_ok = total_ok + thread:get("ok")
    total_not_ok = total_not_ok + thread:get("not_ok")
  end
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "bytes": %d, "ok": %d, "not_ok": %d, '
      .. '"connect_errors": %d, "read_errors": %d, "write_errors": %d, "status_errors": %d, '
      .. '"timeouts": %d, "mean_us": %.1f, "p50_us": %d, "p90_us": %d, "p99_us": %d, '
      .. '"max_us": %d}\n',
    summary.requests, summary.duration, summary.bytes, total_ok, total_not_ok,
    e.connect, e.read, e.write, e.status, e.timeout, latency.mean,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
