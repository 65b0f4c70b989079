// Fuzz target: the configuration reader (parse_config in src/gateway/config.h) on hostile TOML.
//
// Only ConfigError may leave parse_config: any other exception (libFuzzer reports it as a
// crash), or a crash, is a bug. An accepted configuration printed by to_toml() (what
// `unherd check` shows) must be read back to the same effective configuration: its to_toml()
// text must be the same. An upstream's base path, put before every target sent to it, is empty
// or begins with '/'.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "gateway/config.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  unsetenv("UNHERD_ADMIN_TOKEN");  // parse_config reads it when the file sets no token
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace unherd::gateway;
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  Config config;
  try {
    config = parse_config(text, "fuzz");
  } catch (const ConfigError&) {
    return 0;
  }
  for (const auto& route : config.routes) {
    // The proxy sends base_path + an origin-form target upstream.
    if (!route.upstream.base_path.empty() && !route.upstream.base_path.starts_with('/')) {
      std::fprintf(stderr, "invariant violated: an upstream base path not starting with '/': %s\n",
                   route.upstream.base_path.c_str());
      std::abort();
    }
  }
  const std::string printed = to_toml(config);
  std::string again;
  try {
    again = to_toml(parse_config(printed, "printed"));
  } catch (const ConfigError& e) {
    std::fprintf(stderr, "invariant violated: to_toml() printed what parse_config refuses: %s\n%s",
                 e.what(), printed.c_str());
    std::abort();
  }
  if (again != printed) {
    std::fprintf(stderr,
                 "invariant violated: to_toml() printed another configuration than it read\n"
                 "first:\n%s\nread back:\n%s",
                 printed.c_str(), again.c_str());
    std::abort();
  }
  return 0;
}
