// The protocol client: requests return a handle at once; poll(), called once per frame,
// dispatches replies to a Listener within a bounded number of messages and microseconds.
// Single-threaded: call everything from the game thread.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "npcai/dealer.hpp"
#include "npcai/msgpack.hpp"

namespace npcai {

using Handle = long long;  // a request's id on the wire; 0 is never used

// How a say/decide/... request ended well: the `ok` or `done` reply. Views stay valid only
// during the callback: copy what you keep.
struct Result {
  Result(Handle h, const msgpack::Value& whole, const msgpack::Value& val) : handle(h), reply(whole), value(val) {}

  Handle handle;
  std::string_view event;          // "ok" (ops without generation) or "done"
  const msgpack::Value& reply;     // the whole reply map: hello's limits, probs, timing, state...
  const msgpack::Value& value;     // done: the line / choice / object, or the fallback; ok: nil
  std::string_view text;           // the raw generated text (say: all token chunks joined)
  std::string_view finish_reason;  // stop, length, deadline, error
  bool timed_out = false;          // the deadline passed first
  bool used_fallback = false;      // `value` is the request's fallback (or nil if it had none)
  bool local = false;              // ended by this client: the deadline passed with no reply
  // say or decide with actions: the action the NPC chose ({name, args}), or null (it just
  // talks, the answer is a fallback, or no actions were asked for).
  const msgpack::Value* action = nullptr;

  // decide with choices: the probability of `choice` (probs), or -1 when there is none.
  double prob(std::string_view choice) const;
};

// Receives every request's events, inside Client::poll(). It may make new requests.
class Listener {
 public:
  virtual ~Listener() = default;
  virtual void on_token(Handle, std::string_view /*text*/) {}
  // say: a sentence of the line is complete (the sentences joined are the line); chain: those
  // of its say steps.
  virtual void on_sentence(Handle, std::string_view /*text*/) {}
  // chain: a step finished; `step` is its event map (step, as, value, used_fallback, ...).
  virtual void on_step(Handle, const msgpack::Value& /*step*/) {}
  // An NPC chose one of its declared actions: `args` is a map valid against that action's
  // schema. From the `done` of a say or decide with actions (called right before on_done), or a
  // chain step that acted (right after its on_step); never for a fallback.
  virtual void on_action(Handle, std::string_view /*npc*/, std::string_view /*name*/,
                         const msgpack::Value& /*args*/) {}
  virtual void on_done(Handle, const Result&) {}
  // code: the sidecar's (bad_request, unknown_npc, overloaded, ...), or this client's own:
  // unavailable (the connection was lost, or none was open when the request was made), or
  // bad_reply (a reply naming this request did not decode).
  virtual void on_error(Handle, std::string_view /*code*/, std::string_view /*message*/) {}
  virtual void on_cancelled(Handle) {}
};

struct ClientConfig {
  int max_messages_per_poll = 64;
  int poll_budget_us = 1000;                  // poll() stops dispatching once this is spent
  std::size_t max_frame_bytes = 16u << 20;    // a larger frame drops the connection
  msgpack::Limits limits;                     // decoding limits for replies (a reply over them ends with bad_reply)
  int heartbeat_ms = 1000;                    // while waiting and nothing arrives: send a ping
  int silence_timeout_ms = 3000;              // while waiting and nothing arrives: the sidecar is gone
  std::size_t expected_inflight = 64;         // request slots reserved up front
  int frame_report_every = 6;                 // report_frame(): one `frame` request per this many frames
};

// The optional fields of say/decide (and of request()).
struct Options {
  int deadline_ms = -1;                    // < 0: none. Also enforced here, from poll().
  std::optional<msgpack::Value> fallback;  // the value a timed-out answer carries
  int max_tokens = 0;                      // 0: the sidecar's default
  std::optional<double> temperature;
  std::optional<long long> seed;
  int priority = 0;
  msgpack::Value extra;                    // a map of any further fields (top_k, stop, role...)
};

// The fields of a `budget` request. Only those set are sent; the others keep their value on
// the sidecar.
struct Budget {
  std::optional<int> threads;          // most compute threads; 0: the sidecar's choice
  std::optional<double> tokens_per_s;  // cap on dialogue tokens per second; 0: none
  std::optional<double> share;         // (0, 1]: share of wall time the sidecar may compute
  std::optional<double> frame_ms;      // the game's target frame time; 0: no frame reports
};

class Client {
 public:
  static constexpr int kMaxFrameBatch = 64;  // frame times buffered (the oldest go first)

  enum class State { Closed, Connecting, Open };

  explicit Client(Listener& listener, ClientConfig config = {});

  // Starts connecting to "tcp://HOST:PORT" (never blocks); requests still open on an earlier
  // connection end with `unavailable`. False, with error(), if it cannot even start.
  bool connect(std::string_view endpoint);
  // Drops the connection; open requests end with `unavailable` at the next poll() (if any).
  void close();
  State state() const;
  const std::string& error() const { return dealer_.error(); }

  // Requests. Each returns its handle at once; its events come from poll(). A request made
  // while the connection is not open ends with `unavailable` at the next poll().
  Handle hello(std::string_view client_name, std::string_view token = {});
  Handle ping();
  Handle npc(std::string_view name, std::string_view persona, std::optional<long long> seed = {});
  // An NPC with the actions it may take: an array of {name, description, args} maps, `args` a
  // JSON schema (as a map) of the action's arguments. A bad action ends with bad_request.
  Handle npc_with_actions(std::string_view name, std::string_view persona, const msgpack::Value& actions,
                          std::optional<long long> seed = {});
  Handle say(std::string_view name, std::string_view text, const Options& options = {});
  // decide with `choices`, a JSON `schema` (as a map), or a `grammar`; `name` may be empty.
  Handle decide(std::string_view name, std::string_view situation, const std::vector<std::string>& choices,
                const Options& options = {});
  Handle decide_schema(std::string_view name, std::string_view situation, const msgpack::Value& schema,
                       const Options& options = {});
  Handle decide_grammar(std::string_view name, std::string_view situation, std::string_view grammar,
                        const Options& options = {});
  // decide with `actions`: which of the NPC's declared actions it takes (among `actions`; all of
  // them when empty) and with what arguments. value {name, args}; on_action is called.
  // (A say acts after its line with options.extra {"actions": true} or a list of names.)
  Handle decide_action(std::string_view name, std::string_view situation, const std::vector<std::string>& actions,
                       const Options& options = {});
  // act_result: what came of the NPC's action `action`; its next line can refer to it.
  Handle act_result(std::string_view name, std::string_view action, std::string_view result);
  // chain: `steps` (an array of maps: op, as, and that op's fields; "{name}" in a string field is
  // an earlier step's value) in one request; on_step per step, done's reply["results"].
  Handle chain(const msgpack::Value& steps, const Options& options = {});
  Handle observe(std::string_view name, std::string_view text);
  Handle forget(std::string_view name);
  Handle save(std::string_view name);
  Handle load(std::string_view name, std::string_view state);
  Handle stats();
  Handle shutdown();
  // `budget`: its `ok` reply carries `budget` (all of it now) and `effective`.
  Handle set_budget(const Budget& budget);
  // Any op, with its fields as a map (sent in their order after v, id, op).
  Handle request(std::string_view op, const msgpack::Value& fields, const Options& options = {});

  // Asks the sidecar to cancel `h`, which then ends with on_cancelled (or with its own ending,
  // if that was already on its way). False if `h` is not open or nothing is connected.
  bool cancel(Handle h);

  // Non-blocking: reads replies and calls the listener for at most max_messages_per_poll of
  // them within about poll_budget_us, then ends requests whose deadline passed or whose
  // connection was lost. Returns the number of replies dispatched.
  int poll();

  // Records one frame's time (ms). Never sends, blocks or allocates: poll() sends the frames
  // buffered as one `frame` request once frame_report_every have gathered and no earlier
  // report is unanswered. Set a `frame_ms` target with set_budget() for the sidecar to act on them.
  void report_frame(double frame_ms);
  // backoff_level (0-3) of the latest answered `frame` report; 0 before any (or after connect()).
  int backoff_level() const { return backoff_level_; }

  std::size_t pending() const { return open_; }    // the caller's requests still open
  std::uint64_t stray() const { return stray_; }   // replies for no open request (late, id nil, unreadable)

 private:
  using Clock = std::chrono::steady_clock;

  enum class Fail : std::uint8_t { None, NotConnected, Disconnected };

  struct Slot {
    Handle id = 0;                  // 0: free
    bool internal = false;          // this client's own (heartbeat ping, cancel): no events
    bool has_deadline = false;
    Fail fail = Fail::None;         // ends with this error at the next poll()
    Clock::time_point deadline;
    std::optional<msgpack::Value> fallback;
    const char* acts = nullptr;     // "say" or "decide": a request with actions
    std::string npc;                // ... for this NPC
    msgpack::Value steps;           // a chain's steps (each step's op, npc, actions)
  };

  Listener& listener_;
  ClientConfig config_;
  Dealer dealer_;
  std::vector<Slot> slots_;
  std::size_t open_ = 0;
  Handle next_id_ = 1;
  std::vector<std::uint8_t> encoded_;
  msgpack::Value reply_;         // the reply being dispatched, decoded in place
  msgpack::Value ended_value_;   // the fallback of a request ended by this client
  std::string lost_reason_;      // message for requests ended by a lost connection
  bool failing_ = false;         // some slot has a Fail to deliver
  Clock::time_point next_deadline_ = Clock::time_point::max();
  Clock::time_point quiet_since_;  // last time bytes arrived, or waiting began
  std::uint64_t seen_bytes_ = 0;
  Handle heartbeat_ = 0;
  Clock::time_point heartbeat_at_;  // when heartbeat_ was sent
  bool polling_ = false;
  std::uint64_t stray_ = 0;
  double frames_[kMaxFrameBatch] = {};  // report_frame()'s times, oldest first
  int frame_count_ = 0;
  Handle frame_report_ = 0;  // the `frame` request awaiting its reply
  int backoff_level_ = 0;

  msgpack::Value begin(std::string_view op, Handle& id);
  Handle submit(Handle id, msgpack::Value& message, const Options& options, bool internal);
  Handle send_encoded(Handle id, const Options& options, bool internal);  // encoded_ holds the message
  void send_frames();
  Slot& free_slot();
  Slot* find(Handle id);
  void release(Slot& slot);
  void dispatch(const std::uint8_t* body, std::size_t size);
  void unreadable(const std::uint8_t* body, std::size_t size, msgpack::Error why);
  static const msgpack::Value* action_in(std::string_view op, bool acts, const msgpack::Value& answer);
  void lose(std::string_view reason);
  void watch_silence(Clock::time_point now);
  void end_failed();
  void expire(Clock::time_point now);
};

}  // namespace npcai
