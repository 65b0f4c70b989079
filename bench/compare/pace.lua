-- wrk script for `make compare`, workload 5b: each connection sends its next request 1 ms after
-- the previous answer. The same paced load for every system, below saturation, so the latency
-- measured is the server's, not the time client and server spend queued for the same 2 cores.
function delay()
  return 1
end
