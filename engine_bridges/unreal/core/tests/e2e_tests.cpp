// End to end against a real sidecar (libzmq ROUTER, real model), started by the Launcher with
// `$NPCAI_PYTHON -m npcai serve` (default python3; `$NPCAI_SIDECAR serve` when set: a bundled sidecar) and driven like a game loop: poll(), then a
// short sleep. The cases share one sidecar and run in order; a watchdog ends a hung run.
//
//   npcai_e2e_tests [CASE...]

#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <string>
#include <thread>

#include "check.hpp"
#include "game_loop.hpp"
#include "npcai/launcher.hpp"

using npcai::Handle;
using npcai::msgpack::Value;
using Clock = std::chrono::steady_clock;

namespace {

constexpr int kWatchdogSeconds = 150;

// Copies each request's events (callbacks only lend their views).
struct Events : npcai::Listener {
  struct End {
    std::string kind;  // done, error, cancelled
    std::string code, message, text, finish_reason;
    Value value, reply;
    bool timed_out = false, used_fallback = false, local = false;
    Clock::time_point at;
  };
  std::map<Handle, std::string> text;
  std::map<Handle, int> tokens;
  std::map<Handle, End> ends;
  struct Act {
    std::string npc, name;
    Value args;
  };
  std::map<Handle, std::vector<Act>> acts;
  std::map<Handle, std::vector<Value>> steps;

  void on_token(Handle h, std::string_view chunk) override {
    text[h] += chunk;
    ++tokens[h];
  }
  void on_step(Handle h, const Value& step) override { steps[h].push_back(step); }
  void on_action(Handle h, std::string_view npc, std::string_view name, const Value& args) override {
    acts[h].push_back(Act{std::string(npc), std::string(name), args});
  }
  void on_done(Handle h, const npcai::Result& r) override {
    End& e = end(h, "done");
    e.text = r.text;
    e.finish_reason = r.finish_reason;
    e.value = r.value;
    e.reply = r.reply;
    e.timed_out = r.timed_out;
    e.used_fallback = r.used_fallback;
    e.local = r.local;
  }
  void on_error(Handle h, std::string_view code, std::string_view message) override {
    End& e = end(h, "error");
    e.code = code;
    e.message = message;
  }
  void on_cancelled(Handle h) override { end(h, "cancelled"); }

  End& end(Handle h, const char* kind) {
    End& e = ends[h];
    e.kind = kind;
    e.at = Clock::now();
    return e;
  }
  bool ended(Handle h) const { return ends.count(h) == 1; }
};

npcai::LauncherConfig sidecar_config() {
  npcai::LauncherConfig config;
  const char* bundled = std::getenv("NPCAI_SIDECAR");  // a bundled npcai-sidecar: no interpreter
  const char* python = std::getenv("NPCAI_PYTHON");
  if (bundled && *bundled) {
    config.command = {bundled};
  } else {
    config.command = {python && *python ? python : "python3", "-m", "npcai"};
  }
  config.client_name = "npcai-unreal-e2e";
  config.ready_timeout_ms = 90000;
  return config;
}

Events events;
std::unique_ptr<npcai::Launcher> sidecar;  // the one most cases share

using check::game_loop;

bool wait_ready(npcai::Launcher& launcher) {
  return game_loop(launcher, [&] { return launcher.ready() || launcher.state() == npcai::Launcher::State::Failed; },
                   90000) &&
         launcher.ready();
}

bool finish(Handle h, int timeout_ms = 30000) {
  return game_loop(*sidecar, [h] { return events.ended(h); }, timeout_ms);
}

long long ms_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(b - a).count();
}

}  // namespace

CASE(launch_reads_ready_line_and_says_hello) {
  sidecar = std::make_unique<npcai::Launcher>(events, sidecar_config());
  REQUIRE(sidecar->launch(), sidecar->error());
  REQUIRE(wait_ready(*sidecar), sidecar->error());
  const Value& hello = sidecar->hello_reply();
  CHECK(hello["protocol"].as_int() == 1);
  CHECK(hello["pid"].as_int() == sidecar->sidecar_pid());
  CHECK(hello["limits"]["max_inflight_per_client"].as_int() > 0);
  std::printf("  sidecar %s at %s\n", std::string(hello["server"].as_str()).c_str(), sidecar->endpoint().c_str());
}

CASE(attach_to_running_sidecar) {
  REQUIRE(sidecar && sidecar->ready());
  Events own;
  npcai::Launcher attached(own, sidecar_config());
  REQUIRE(attached.attach(sidecar->endpoint()), attached.error());
  REQUIRE(wait_ready(attached), attached.error());
  CHECK(attached.hello_reply()["pid"].as_int() == sidecar->sidecar_pid());
  CHECK(attached.sidecar_pid() == 0);
  const Handle ping = attached.client().ping();
  REQUIRE(game_loop(attached, [&] { return own.ended(ping); }, 5000));
  CHECK(own.ends[ping].kind == "done");
  attached.stop();  // only disconnects: the sidecar is not ours
  const Handle still = sidecar->client().ping();
  REQUIRE(finish(still, 5000));
  CHECK(events.ends[still].kind == "done");
}

CASE(npc_defines_one) {
  REQUIRE(sidecar && sidecar->ready());
  const Handle h = sidecar->client().npc("brom", "You are Brom, a gruff blacksmith in a mountain village.", 7);
  REQUIRE(finish(h));
  CHECK(events.ends[h].kind == "done", events.ends[h].code + " " + events.ends[h].message);
  CHECK(events.ends[h].reply["event"].as_str() == "ok");
  CHECK(events.ends[h].reply["cached_tokens"].as_int() > 0);
}

CASE(say_streams_tokens) {
  REQUIRE(sidecar && sidecar->ready());
  npcai::Options options;
  options.max_tokens = 24;
  options.seed = 1;
  const Handle h = sidecar->client().say("brom", "Hello there! What do you sell?", options);
  REQUIRE(finish(h));
  const Events::End& e = events.ends[h];
  REQUIRE(e.kind == "done", e.code + " " + e.message);
  CHECK(events.tokens[h] > 0);
  CHECK(!e.text.empty() && e.text == events.text[h], "done.text '" + e.text + "' tokens '" + events.text[h] + "'");
  CHECK(e.value.is_str() && !e.timed_out && !e.used_fallback);
  std::printf("  %d tokens: %s\n", events.tokens[h], e.text.c_str());
}

CASE(decide_with_choices) {
  REQUIRE(sidecar && sidecar->ready());
  const Handle h = sidecar->client().decide("brom", "A goblin runs into the forge with a knife.", {"attack", "flee", "hide"});
  REQUIRE(finish(h));
  const Events::End& e = events.ends[h];
  REQUIRE(e.kind == "done", e.code + " " + e.message);
  const std::string value(e.value.as_str());
  CHECK(value == "attack" || value == "flee" || value == "hide", value);
  const Value& probs = e.reply["probs"];
  double sum = 0;
  for (std::size_t i = 0; i < probs.size(); ++i) sum += probs.val(i).as_double();
  CHECK(probs.size() == 3 && std::fabs(sum - 1.0) < 1e-3, std::to_string(sum));
  CHECK(!e.used_fallback);
  std::printf("  chose %s (p=%.3f)\n", value.c_str(), probs[value].as_double());
}

CASE(decide_with_schema) {
  REQUIRE(sidecar && sidecar->ready());
  Value act = Value::map();
  act.set("enum", Value::array({"greet", "ignore", "attack"}));
  Value properties = Value::map();
  properties.set("act", act);
  Value schema = Value::map();
  schema.set("type", "object").set("properties", properties).set("required", Value::array({"act"}));
  schema.set("additionalProperties", false);
  const Handle h = sidecar->client().decide_schema("brom", "A knight walks into the forge at night.", schema);
  REQUIRE(finish(h));
  const Events::End& e = events.ends[h];
  REQUIRE(e.kind == "done", e.code + " " + e.message);
  const std::string chosen(e.value["act"].as_str());
  CHECK(e.value.is_map() && (chosen == "greet" || chosen == "ignore" || chosen == "attack"), e.text);
  CHECK(!e.used_fallback);
  std::printf("  value %s\n", e.text.c_str());
}

CASE(action_decided_with_enum_args) {
  REQUIRE(sidecar && sidecar->ready());
  const Value items = Value::array({"sword", "shield", "bread"});
  Value item = Value::map();
  item.set("enum", items);
  Value give = Value::map();
  give.set("type", "object").set("properties", Value::map().set("item", item)).set("required", Value::array({"item"}));
  Value actions = Value::array();
  actions.push(Value::map().set("name", "give_item").set("description", "give the customer what they paid for").set("args", give));
  actions.push(Value::map().set("name", "refuse").set("description", "refuse the deal"));
  const Handle npc = sidecar->client().npc_with_actions("smith", "You are Brom, the village blacksmith. You sell swords and shields.",
                                           actions, 5);
  REQUIRE(finish(npc));
  REQUIRE(events.ends[npc].kind == "done", events.ends[npc].code + " " + events.ends[npc].message);
  const Handle h = sidecar->client().decide_action("smith", "A customer hands you 20 gold for a shield.", {});
  REQUIRE(finish(h));
  const Events::End& e = events.ends[h];
  REQUIRE(e.kind == "done", e.code + " " + e.message);
  CHECK(!e.used_fallback, e.finish_reason);
  REQUIRE(events.acts[h].size() == 1, std::to_string(events.acts[h].size()) + " actions");
  const Events::Act& act = events.acts[h][0];
  CHECK(act.npc == "smith", act.npc);
  if (act.name == "give_item") {
    const std::string chosen(act.args["item"].as_str());
    CHECK(chosen == "sword" || chosen == "shield" || chosen == "bread", chosen);
  } else {
    CHECK(act.name == "refuse" && act.args.is_map() && act.args.size() == 0, act.name);
  }
  CHECK(e.value["name"].as_str() == act.name && e.value["args"] == act.args);
  const Value& probs = e.reply["probs"];
  CHECK(probs.size() == 2 && probs.find("give_item") && probs.find("refuse"));
  const Handle told = sidecar->client().act_result("smith", act.name, "The customer is satisfied.");
  REQUIRE(finish(told));
  CHECK(events.ends[told].kind == "done" && events.ends[told].reply["event"].as_str() == "ok",
        events.ends[told].code + " " + events.ends[told].message);
  std::printf("  smith acts: %s %s\n", act.name.c_str(), std::string(act.args["item"].as_str()).c_str());
}

CASE(chain_reports_steps_and_results) {
  REQUIRE(sidecar && sidecar->ready());
  Value steps = Value::array();
  steps.push(Value::map()
                 .set("op", "decide").set("as", "intent").set("npc", "smith")
                 .set("situation", "A customer asks for a discount on a shield.")
                 .set("choices", Value::array({"haggle", "refuse", "agree"})).set("fallback", "refuse"));
  steps.push(Value::map()
                 .set("op", "say").set("as", "line").set("npc", "smith")
                 .set("text", "Can I have the shield for less? (You {intent}.)")
                 .set("max_tokens", 16).set("seed", 1).set("fallback", "Hm."));
  steps.push(Value::map()
                 .set("op", "decide").set("as", "emotion").set("situation", "The blacksmith said: {line}")
                 .set("choices", Value::array({"happy", "angry", "calm"})).set("fallback", "calm"));
  const Handle h = sidecar->client().chain(steps);
  REQUIRE(finish(h, 60000));
  const Events::End& e = events.ends[h];
  REQUIRE(e.kind == "done", e.code + " " + e.message);
  const std::vector<Value>& seen = events.steps[h];
  REQUIRE(seen.size() == 3, std::to_string(seen.size()) + " step events");
  const char* names[] = {"intent", "line", "emotion"};
  for (int i = 0; i < 3; ++i) CHECK(seen[i]["as"].as_str() == names[i] && seen[i]["step"].as_int() == i);
  const Value& results = e.reply["results"];
  const std::string intent(results["intent"].as_str()), emotion(results["emotion"].as_str());
  CHECK(intent == "haggle" || intent == "refuse" || intent == "agree", intent);
  CHECK(emotion == "happy" || emotion == "angry" || emotion == "calm", emotion);
  CHECK(results["line"] == seen[1]["value"] && results["line"].as_str() == events.text[h], events.text[h]);
  std::printf("  chain: %s / %s / %s\n", intent.c_str(), events.text[h].c_str(), emotion.c_str());
}

CASE(cancel_mid_stream) {
  REQUIRE(sidecar && sidecar->ready());
  npcai::Options options;
  options.max_tokens = 512;
  const Handle h = sidecar->client().say("brom", "Tell me the long story of your life, every year of it.", options);
  REQUIRE(game_loop(*sidecar, [h] { return events.tokens[h] > 0 || events.ended(h); }, 30000));
  REQUIRE(!events.ended(h), "ended before the first token: " + events.ends[h].kind);
  CHECK(sidecar->client().cancel(h));
  REQUIRE(finish(h));
  CHECK(events.ends[h].kind == "cancelled", events.ends[h].kind);
  std::printf("  cancelled after %d tokens\n", events.tokens[h]);
}

CASE(deadline_gives_fallback) {
  REQUIRE(sidecar && sidecar->ready());
  npcai::Options say;
  say.deadline_ms = 1;
  say.fallback = Value("...");
  const Handle line = sidecar->client().say("brom", "Quick, what is your name?", say);
  npcai::Options decide;
  decide.deadline_ms = 1;
  decide.fallback = Value("flee");
  const Handle choice = sidecar->client().decide("brom", "A dragon lands.", {"attack", "flee"}, decide);
  REQUIRE(finish(line, 5000) && finish(choice, 5000));
  for (const Handle h : {line, choice}) {
    const Events::End& e = events.ends[h];
    CHECK(e.kind == "done" && e.timed_out && e.used_fallback && e.finish_reason == "deadline", e.kind);
    std::printf("  #%lld timed out, ended by %s\n", h, e.local ? "the bridge" : "the sidecar");
  }
  CHECK(events.ends[line].value == Value("..."));
  CHECK(events.ends[choice].value == Value("flee"));
}

CASE(sidecar_deadline_reply) {
  // deadline_ms sent as a plain field: only the sidecar enforces it, so its own deadline reply
  // (not the bridge's) ends the request.
  REQUIRE(sidecar && sidecar->ready());
  npcai::Options options;
  options.extra = Value::map();
  options.extra.set("deadline_ms", 1).set("fallback", "...");
  const Handle h = sidecar->client().say("brom", "Quick, what is your name?", options);
  REQUIRE(finish(h, 5000));
  const Events::End& e = events.ends[h];
  CHECK(e.kind == "done" && !e.local && e.timed_out && e.finish_reason == "deadline", e.kind);
  CHECK(e.used_fallback && e.value == Value("..."));
  std::printf("  sidecar's deadline reply %s used_fallback\n", e.reply.find("used_fallback") ? "carries" : "lacks");
}

CASE(silent_sidecar_deadline_from_poll) {
  // A stopped sidecar answers nothing: the bridge ends the request at its deadline itself.
  REQUIRE(sidecar && sidecar->ready());
  const auto pid = static_cast<pid_t>(sidecar->sidecar_pid());
  REQUIRE(::kill(pid, SIGSTOP) == 0);
  npcai::Options options;
  options.deadline_ms = 300;
  options.fallback = Value("Hm.");
  const auto sent = Clock::now();
  const Handle h = sidecar->client().say("brom", "Are you there?", options);
  const bool ended = finish(h, 3000);
  ::kill(pid, SIGCONT);
  REQUIRE(ended);
  const Events::End& e = events.ends[h];
  const long long took = ms_between(sent, e.at);
  CHECK(e.kind == "done" && e.local && e.timed_out && e.used_fallback && e.value == Value("Hm."), e.kind);
  CHECK(took >= 300 && took < 450, std::to_string(took) + " ms");  // the first poll after it
  std::printf("  ended at %lld ms (deadline 300 ms)\n", took);
  const Handle ping = sidecar->client().ping();  // resumed: the connection still works
  REQUIRE(finish(ping, 5000));
  CHECK(events.ends[ping].kind == "done");
}

CASE(budget_threads_show_in_stats) {
  REQUIRE(sidecar && sidecar->ready());
  npcai::Budget budget;
  budget.threads = 1;
  const Handle h = sidecar->client().set_budget(budget);
  REQUIRE(finish(h, 5000));
  const Events::End& e = events.ends[h];
  REQUIRE(e.kind == "done", e.code + " " + e.message);
  CHECK(e.reply["budget"]["threads"].as_int() == 1);
  CHECK(e.reply["budget"].find("frame_ms") && e.reply["budget"]["frame_ms"].as_double() == 0);  // left as it was
  const Handle stats = sidecar->client().stats();
  REQUIRE(finish(stats, 5000));
  const Value& effective = events.ends[stats].reply["engine"]["budget"]["effective"];
  CHECK(effective["threads"].as_int() == 1, events.ends[stats].kind + " threads " +
                                                  std::to_string(effective["threads"].as_int(-1)));
}

CASE(frame_reports_over_target_back_off) {
  // Target 16.7 ms, frames of 40 ms: the sidecar backs off, at most one level per 250 ms.
  REQUIRE(sidecar && sidecar->ready());
  npcai::Client& client = sidecar->client();
  npcai::Budget budget;
  budget.frame_ms = 16.7;
  const Handle h = client.set_budget(budget);
  REQUIRE(finish(h, 5000));
  REQUIRE(events.ends[h].kind == "done", events.ends[h].code + " " + events.ends[h].message);
  CHECK(client.backoff_level() == 0);
  const auto start = Clock::now();  // before the first report is sent
  Clock::time_point first_at{}, second_at{};
  const bool backed_off = game_loop(*sidecar, [&] {
    client.report_frame(40.0);
    const int level = client.backoff_level();
    if (level >= 1 && first_at == Clock::time_point{}) first_at = Clock::now();
    if (level >= 2 && second_at == Clock::time_point{}) second_at = Clock::now();
    return level >= 2;
  }, 5000);
  CHECK(first_at != Clock::time_point{}, "backoff_level never rose above 0");
  REQUIRE(backed_off, "backoff_level " + std::to_string(client.backoff_level()));
  CHECK(client.backoff_level() <= 3);
  const long long to_first = ms_between(start, first_at), to_second = ms_between(start, second_at);
  CHECK(to_second >= 250, std::to_string(to_second) + " ms to level 2");  // one level per 250 ms at most
  std::printf("  backoff_level 1 after %lld ms, 2 after %lld ms\n", to_first, to_second);

  // Back to no target and all threads: the level drops to 0 at once.
  npcai::Budget reset;
  reset.frame_ms = 0;
  reset.threads = 0;
  const Handle r = client.set_budget(reset);
  REQUIRE(finish(r, 5000));
  CHECK(events.ends[r].reply["effective"]["threads"].as_int() >= 1);
  REQUIRE(game_loop(*sidecar, [&] {
    client.report_frame(40.0);
    return client.backoff_level() == 0;
  }, 3000), "backoff_level " + std::to_string(client.backoff_level()));
}

CASE(killed_sidecar_ends_pending_requests) {
  REQUIRE(sidecar && sidecar->ready());
  npcai::Options options;
  options.max_tokens = 512;
  options.deadline_ms = 8000;
  options.fallback = Value("...");
  const Handle h = sidecar->client().say("brom", "Tell me about every sword you ever made.", options);
  REQUIRE(game_loop(*sidecar, [h] { return events.tokens[h] > 0 || events.ended(h); }, 30000));
  REQUIRE(!events.ended(h), "ended before the first token");
  const auto killed = Clock::now();
  REQUIRE(::kill(static_cast<pid_t>(sidecar->sidecar_pid()), SIGKILL) == 0);
  REQUIRE(finish(h, 8000));
  const Events::End& e = events.ends[h];
  const long long took = ms_between(killed, e.at);
  CHECK(e.kind == "error" && e.code == "unavailable", e.kind + " " + e.code);
  CHECK(took < 1000, std::to_string(took) + " ms");
  REQUIRE(game_loop(*sidecar, [] { return sidecar->state() == npcai::Launcher::State::Failed; }, 3000));
  std::printf("  error '%s: %s' %lld ms after kill -9; launcher: %s\n", e.code.c_str(), e.message.c_str(), took,
              sidecar->error().c_str());
}

CASE(relaunch_after_crash) {
  REQUIRE(sidecar);
  REQUIRE(sidecar->launch(), sidecar->error());
  REQUIRE(wait_ready(*sidecar), sidecar->error());
  CHECK(sidecar->hello_reply()["pid"].as_int() == sidecar->sidecar_pid());
  const Handle h = sidecar->client().npc("grik", "You are Grik, a cowardly goblin.");
  REQUIRE(finish(h));
  CHECK(events.ends[h].kind == "done");
}

CASE(stop_shuts_the_sidecar_down) {
  REQUIRE(sidecar && sidecar->ready());
  const auto pid = static_cast<pid_t>(sidecar->sidecar_pid());
  const auto start = Clock::now();
  sidecar->stop();
  const long long took = ms_between(start, Clock::now());
  CHECK(::kill(pid, 0) != 0);  // exited and reaped
  CHECK(took < 1000, std::to_string(took) + " ms: it did not exit on shutdown");  // half of stop_timeout_ms
  std::printf("  exited %lld ms after shutdown\n", took);
}

CASE(launch_with_ready_file) {
  npcai::LauncherConfig config = sidecar_config();
  config.ready_file = "npcai-e2e-ready.txt";
  npcai::Launcher launcher(events, config);
  REQUIRE(launcher.launch(), launcher.error());
  REQUIRE(wait_ready(launcher), launcher.error());
  CHECK(launcher.hello_reply()["protocol"].as_int() == 1);
  const Handle ping = launcher.client().ping();
  REQUIRE(game_loop(launcher, [ping] { return events.ended(ping); }, 5000));
  CHECK(events.ends[ping].kind == "done");
  launcher.stop();
  std::remove(config.ready_file.c_str());
}

CASE(launch_keeps_the_token_off_the_command_line) {
  // Any user of the machine can read /proc/PID/cmdline: the token goes in the child's environment.
  npcai::LauncherConfig config = sidecar_config();
  config.token = "s3cret-from-the-game";
  npcai::Launcher launcher(events, config);
  REQUIRE(launcher.launch(), launcher.error());
  REQUIRE(wait_ready(launcher), launcher.error());  // hello with the token was accepted
  std::ifstream cmdline("/proc/" + std::to_string(launcher.sidecar_pid()) + "/cmdline", std::ios::binary);
  if (cmdline) {
    std::string argv((std::istreambuf_iterator<char>(cmdline)), std::istreambuf_iterator<char>());
    std::replace(argv.begin(), argv.end(), '\0', ' ');
    CHECK(argv.find("s3cret") == std::string::npos && argv.find("--token") == std::string::npos, argv);
  }
  Events own;
  npcai::Launcher stranger(own, sidecar_config());  // no token
  REQUIRE(stranger.attach(launcher.endpoint()), stranger.error());
  CHECK(!wait_ready(stranger));
  CHECK(stranger.error().find("unauthorized") != std::string::npos, stranger.error());
  stranger.stop();
  const Handle ping = launcher.client().ping();
  REQUIRE(game_loop(launcher, [ping] { return events.ended(ping); }, 5000));
  CHECK(events.ends[ping].kind == "done");
  launcher.stop();
}

CASE(launch_finds_the_bundle_before_path) {
  // What `npcai bundle` ships: an executable npcai-sidecar taking serve's flags. Here one is a
  // script that runs this Python's `-m npcai serve "$@"`. The game's folder wins over PATH, PATH
  // over the configured command (which does not exist, so a wrong choice fails the case).
  const char* python = std::getenv("NPCAI_PYTHON");
  const std::string interpreter = python && *python ? python : "python3";
  char cwd[4096];
  REQUIRE(::getcwd(cwd, sizeof cwd) != nullptr);
  const std::string root = std::string(cwd) + "/bundle e2e", game = root + "/game dir", bin = root + "/bin";
  for (const std::string& d : {root, game, game + "/npcai", bin}) ::mkdir(d.c_str(), 0755);
  const std::string in_game = game + "/npcai/npcai-sidecar", on_path = bin + "/npcai-sidecar";
  for (const std::string& path : {in_game, on_path}) {
    const char* bundled = std::getenv("NPCAI_SIDECAR");  // set: the stand-ins start the real bundle
    if (bundled && *bundled) {
      std::ofstream(path) << "#!/bin/sh\nexec '" << bundled << "' \"$@\"\n";
    } else {
      std::ofstream(path) << "#!/bin/sh\nexec '" << interpreter << "' -m npcai serve \"$@\"\n";
    }
    REQUIRE(::chmod(path.c_str(), 0755) == 0);
  }
  const char* old_path = std::getenv("PATH");
  const std::string saved = old_path ? old_path : "";
  ::setenv("PATH", (bin + ":" + saved).c_str(), 1);
  npcai::LauncherConfig config = sidecar_config();
  config.command = {root + "/no such npcai"};
  config.bundle_dirs = {game, game + "/npcai"};
  for (const std::string& expected : {in_game, on_path}) {
    npcai::Launcher launcher(events, config);
    REQUIRE(launcher.launch(), launcher.error());
    CHECK(launcher.program() == expected, launcher.program());
    REQUIRE(wait_ready(launcher), launcher.error());
    CHECK(launcher.hello_reply()["pid"].as_int() == launcher.sidecar_pid());
    const Handle h = launcher.client().npc("brom", "You are Brom, the village blacksmith.");
    REQUIRE(game_loop(launcher, [h] { return events.ended(h); }, 30000));
    CHECK(events.ends[h].kind == "done", events.ends[h].kind + " " + events.ends[h].code);
    launcher.stop();
    std::printf("  started %s\n", launcher.program().c_str());
    std::remove(in_game.c_str());  // next round: only the one on PATH is left
  }
  ::setenv("PATH", saved.c_str(), 1);
  std::remove(on_path.c_str());
  for (const std::string& d : {game + "/npcai", game, bin, root}) ::rmdir(d.c_str());
}

int main(int argc, char** argv) {
  alarm(kWatchdogSeconds);  // never hang a test run; the sidecar follows (--parent-pid)
  const int rc = check::run_all(argc, argv);
  sidecar.reset();
  return rc;
}
