// `unherd demo`: the gateway in front of a simulated slow, flaky upstream (200 ms, 10% 503s),
// a herd of 1,000 identical requests and then 1,000 over 100 keys, and a table of what happened.
#pragma once

#include <cstdint>

namespace unherd::cli {

struct DemoOptions {
  std::uint16_t port = 8080;
  std::uint16_t admin_port = 9901;
  bool exit_after = false;  // print the table and exit instead of serving until Ctrl-C
};

int run_demo(const DemoOptions& options);

}  // namespace unherd::cli
