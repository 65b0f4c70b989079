// unherd: the gateway's command line.
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <iostream>

#include "cli/demo.h"
#include "gateway/config.h"
#include "gateway/diagnostics.h"
#include "gateway/gateway.h"
#include "herd/herd.h"

namespace {

constexpr const char* kVersion = "unherd 0.1.0";

// Exit codes: 0 ok, 1 runtime failure (cannot listen), 2 bad configuration or usage.
int serve(const std::string& path) {
  using namespace unherd::gateway;
  Config config;
  try {
    config = load_config(path);
  } catch (const ConfigError& e) {
    std::fprintf(stderr, "unherd: %s\n", e.what());
    return 2;
  }
  try {
    start_diagnostics(config.server.log_level);
    unherd::herd::raise_file_limit();
    Gateway gateway(config);
    gateway.start();
    std::printf("unherd listening on http://%s (admin http://%s), %u threads\n",
                gateway.listen_endpoint().to_string().c_str(),
                gateway.admin_endpoint().to_string().c_str(), config.server.threads);
    std::fflush(stdout);
    gateway.run_with_signals(path);
    // Drained. Exiting here, not by destroying the gateway: anything that outlived the grace
    // period still references its io_contexts.
    // No flush of stdout here: when it is the access log and nobody reads it, a flush would
    // block the exit forever. The access log's writer has had its chance during the drain.
    drain_diagnostics(std::chrono::seconds(1));
    std::_Exit(0);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "unherd: %s\n", e.what());
    return 1;
  }
  return 0;
}

int check(const std::string& path) {
  try {
    auto config = unherd::gateway::load_config(path);
    std::cout << "# " << path << ": valid. Effective configuration:\n"
              << unherd::gateway::to_toml(config);
    return 0;
  } catch (const unherd::gateway::ConfigError& e) {
    std::fprintf(stderr, "unherd: %s\n", e.what());
    return 2;
  }
}

}  // namespace

int main(int argc, char** argv) {
  // Before any thread exists: signals wait for Gateway::run_with_signals instead of killing us.
  unherd::gateway::block_signals();
  CLI::App app{"unherd: a request-coalescing cache gateway for slow, flaky APIs"};
  app.set_version_flag("--version", kVersion);
  app.require_subcommand(1);

  std::string config_path;
  auto* serve_cmd = app.add_subcommand("serve", "Run the gateway");
  serve_cmd->add_option("--config,-c", config_path, "TOML configuration file")->required();
  auto* check_cmd = app.add_subcommand("check", "Validate a configuration and print it in full");
  check_cmd->add_option("--config,-c", config_path, "TOML configuration file")->required();
  unherd::cli::DemoOptions demo_options;
  auto* demo_cmd = app.add_subcommand(
      "demo", "Gateway + simulated slow, flaky upstream + a herd of clients, then keep serving");
  demo_cmd->add_option("--port", demo_options.port, "Gateway port")->capture_default_str();
  demo_cmd->add_option("--admin-port", demo_options.admin_port, "Admin port")
      ->capture_default_str();
  demo_cmd->add_flag("--exit", demo_options.exit_after, "Exit after the table instead of serving");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  if (*serve_cmd) return serve(config_path);
  if (*check_cmd) return check(config_path);
  if (*demo_cmd) return unherd::cli::run_demo(demo_options);
  return 2;
}
