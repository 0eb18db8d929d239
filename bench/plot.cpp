#include "plot.hpp"

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "broker/platform.hpp"

extern char** environ;

namespace vipc::bench {
namespace {

// One panel: the entries of one test (and mode).
struct Panel {
  std::string test, mode, title, ylabel;
  bool rate = false;
};

std::string label(const Entry& e, const char* key) {
  auto it = e.labels.find(key);
  if (it == e.labels.end()) return {};
  return it->is_string() ? it->get<std::string>() : it->dump();
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Quotes a string for gnuplot (single quotes; a single quote doubled).
std::string quoted(const std::string& s) {
  std::string q = "'";
  for (char c : s) {
    q += c;
    if (c == '\'') q += '\'';
  }
  return q + "'";
}

}  // namespace

std::string plot_terminal(const std::string& file) {
  std::string lower = file;
  std::transform(lower.begin(), lower.end(), lower.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  if (ends_with(lower, ".png")) return "pngcairo size 1400,1000 font 'sans,10'";
  if (ends_with(lower, ".svg")) return "svg size 1400,1000 font 'sans,10' background '#ffffff'";
  return {};
}

void plot_report(const Report& report, const std::string& file) {
  const std::string terminal = plot_terminal(file);
  if (terminal.empty()) throw BenchError("--plot: the file must end in .png or .svg");
  auto made = platform::make_temp_dir("/tmp/vipc-bench-plot-XXXXXX");
  if (!made) throw BenchError("--plot: cannot create a private directory");
  const std::filesystem::path dir = *made;
  struct Cleanup {
    std::filesystem::path dir;
    ~Cleanup() {
      std::error_code ec;
      std::filesystem::remove_all(dir, ec);
    }
  } cleanup{dir};

  std::string size;
  for (const Entry& e : report.entries) {
    if (label(e, "test") == "large") size = label(e, "size");
  }
  const std::vector<Panel> panels = {
      {"pingpong", "busy", "64-byte round trip, busy-polling", "round trip (ns, log)", false},
      {"pingpong", "blocking", "64-byte round trip, blocking", "round trip (ns, log)", false},
      {"large", "", fmt::format("{}-byte message round trip", size), "round trip (ns, log)", false},
      {"throughput", "", "64-byte messages/s, one by one", "messages/s (log)", true},
  };
  std::string script = fmt::format("set terminal {}\nset output {}\n", terminal, quoted(file));
  script += fmt::format("set multiplot layout 2,2 title {}\n",
                        quoted(report.title.substr(0, report.title.find('\n'))));
  script +=
      "set style data histogram\nset style histogram errorbars gap 1 lw 1\n"
      "set style fill solid 0.85 border -1\nset logscale y\nset grid ytics\n"
      "set xtics rotate by -30 nomirror\nset key top center horizontal opaque\nset bars 0.5\n";
  for (std::size_t i = 0; i < panels.size(); ++i) {
    const Panel& p = panels[i];
    const std::filesystem::path data = dir / fmt::format("panel{}.dat", i);
    std::ofstream out(data);
    int rows = 0;
    for (const Entry& e : report.entries) {
      if (label(e, "test") != p.test || (!p.mode.empty() && label(e, "mode") != p.mode)) continue;
      if (!e.skipped.empty()) continue;
      const std::string name = "\"" + e.system + "\"";  // system names hold no quotes
      if (p.rate && e.rate) {
        const auto& r = e.rate->round_msgs_per_s;
        const double lo = r.empty() ? e.rate->msgs_per_s : *std::min_element(r.begin(), r.end());
        const double hi = r.empty() ? e.rate->msgs_per_s : *std::max_element(r.begin(), r.end());
        out << fmt::format("{} {:.0f} {:.0f} {:.0f}\n", name, e.rate->msgs_per_s, lo, hi);
        ++rows;
      } else if (!p.rate && e.latency) {
        const auto& r = e.latency->round_p50;
        const double lo = r.empty() ? e.latency->p50 : *std::min_element(r.begin(), r.end());
        const double hi = r.empty() ? e.latency->p50 : *std::max_element(r.begin(), r.end());
        out << fmt::format("{} {:.1f} {:.1f} {:.1f} {:.1f} {:.1f}\n", name, e.latency->p50, lo, hi,
                           e.latency->p99, e.latency->p999);
        ++rows;
      }
    }
    out.close();
    script += fmt::format("set title {}\nset ylabel {}\n", quoted(p.title), quoted(p.ylabel));
    if (rows == 0) {
      script +=
          "unset logscale y\nset xrange [0:1]\nset yrange [0:1]\n"
          "plot 2 notitle\nset logscale y\nset autoscale\n";
    } else if (p.rate) {
      script += fmt::format("plot {} using 2:3:4:xtic(1) title 'msgs/s (whiskers: rounds)'\n",
                            quoted(data));
    } else {
      script += fmt::format(
          "plot {0} using 2:3:4:xtic(1) title 'p50 (whiskers: rounds)', '' using 5:5:5 title "
          "'p99', '' using 6:6:6 title 'p99.9'\n",
          quoted(data));
    }
  }
  script += "unset multiplot\n";
  const std::filesystem::path script_path = dir / "peers.gp";
  {
    std::ofstream out(script_path);
    out << script;
    if (!out.flush()) throw BenchError("--plot: cannot write the gnuplot script");
  }
  const std::string log = (dir / "gnuplot.log").string();
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, log.c_str(), O_WRONLY | O_CREAT, 0600);
  posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
  const std::string path = script_path.string();
  char arg0[] = "gnuplot";
  std::vector<char> arg1(path.begin(), path.end());
  arg1.push_back('\0');
  char* argv[] = {arg0, arg1.data(), nullptr};
  pid_t pid = 0;
  const int rc = ::posix_spawnp(&pid, "gnuplot", &actions, nullptr, argv, environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) {
    throw BenchError(
        fmt::format("--plot: cannot run gnuplot ({}; install gnuplot-nox)", errno_text(rc)));
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    std::ifstream in(log);
    std::string text, line;
    while (std::getline(in, line)) text += line + " ";
    if (text.size() > 400) text = text.substr(text.size() - 400);
    throw BenchError(fmt::format("--plot: gnuplot failed: {}", text));
  }
}

}  // namespace vipc::bench
