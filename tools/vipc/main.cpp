// The vipc command-line tool.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <string>

#include "audit.hpp"
#include "demo.hpp"
#include "observe.hpp"
#ifdef VIPC_HAVE_BENCH
#include "bench.hpp"
#endif

int main(int argc, char** argv) {
  CLI::App app{"vipc: fast, safe inter-process communication for Linux"};
  app.require_subcommand(1);

  auto* demo = app.add_subcommand("demo", "Two processes exchange messages through vipc");
  vipc::tools::DemoOptions demo_opts;
  demo->add_option("--messages", demo_opts.messages, "Messages per mode")
      ->check(CLI::PositiveNumber);

  vipc::tools::AuditCommand audit_cmd;
  vipc::tools::add_audit_command(app, audit_cmd);
  const vipc::tools::ObserveCommands observe(app);  // trace, messages, channels, stats, top

#ifdef VIPC_HAVE_BENCH
  auto* bench = app.add_subcommand("bench", "Run a benchmark scenario beside its floor");
  vipc::bench::Options bo;
  std::string names;
  for (const auto& n : vipc::bench::scenario_names()) names += (names.empty() ? "" : ", ") + n;
  bench->add_option("scenario", bo.scenario, "Scenario: " + names)->required();
  bench->add_flag("--json", bo.json, "One JSON document on stdout");
  bench->add_flag("--quick", bo.quick, "Short smoke run (not for numbers)");
  bench->add_option("--seconds", bo.seconds, "Seconds per measured system")
      ->check(CLI::PositiveNumber);
  bench->add_option("--size", bo.size, "Message size in bytes")->check(CLI::PositiveNumber);
  bench->add_option("--subscribers", bo.subscribers, "Subscribers (topic)")
      ->check(CLI::PositiveNumber);
  bench->add_option("--senders", bo.senders, "Senders (fanin)")->check(CLI::PositiveNumber);
  bench->add_flag("--peers", bo.peers, "Include the peer systems");
  bench->add_flag("--blocking", bo.blocking, "Waiting sides park (pingpong, call, mq)");
  bench->add_flag("--trace", bo.trace, "pingpong: channels through a broker, tracing off vs on");
  bench->add_flag("--rate-limit", bo.rate_limit,
                  "pingpong: channels through a broker, without and with a rate limit");
  bench->add_option("--plot", bo.plot, "Render a plot (PNG or SVG) with gnuplot");
#endif

  CLI11_PARSE(app, argc, argv);

  if (demo->parsed()) return vipc::tools::run_demo(demo_opts);
  if (const int rc = vipc::tools::run_audit_command(audit_cmd); rc >= 0) return rc;
  if (const int rc = observe.run(); rc >= 0) return rc;
#ifdef VIPC_HAVE_BENCH
  if (bench->parsed()) return vipc::bench::run(bo);
#endif
  return 2;
}
