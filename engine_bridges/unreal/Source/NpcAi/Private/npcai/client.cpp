#include "npcai/client.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

namespace npcai {

namespace {

std::chrono::milliseconds ms(int v) { return std::chrono::milliseconds(v); }

// A fixstr (up to 31 bytes), as msgpack::encode writes it.
void put_fixstr(std::vector<std::uint8_t>& out, std::string_view s) {
  out.push_back(static_cast<std::uint8_t>(0xa0 | s.size()));
  out.insert(out.end(), s.begin(), s.end());
}

}  // namespace

double Result::prob(std::string_view choice) const {
  const msgpack::Value* p = reply["probs"].find(choice);
  return p && p->is_number() ? p->as_double() : -1.0;
}

Client::Client(Listener& listener, ClientConfig config)
    : listener_(listener), config_(std::move(config)), dealer_(config_.max_frame_bytes) {
  slots_.reserve(config_.expected_inflight);
}

bool Client::connect(std::string_view endpoint) {
  close();
  quiet_since_ = Clock::now();
  backoff_level_ = 0;  // perhaps another sidecar
  return dealer_.connect(endpoint);
}

void Client::close() {
  if (dealer_.state() != Dealer::State::Closed) dealer_.close("the connection was closed");
  lose(dealer_.error());
}

Client::State Client::state() const {
  switch (dealer_.state()) {
    case Dealer::State::Closed: return State::Closed;
    case Dealer::State::Open: return State::Open;
    default: return State::Connecting;
  }
}

// --- requests -------------------------------------------------------------------------------

msgpack::Value Client::begin(std::string_view op, Handle& id) {
  id = next_id_++;
  msgpack::Value message = msgpack::Value::map();
  message.set("v", 1).set("id", id).set("op", op);
  return message;
}

Handle Client::hello(std::string_view client_name, std::string_view token) {
  Handle id;
  msgpack::Value m = begin("hello", id);
  m.set("client", client_name);
  if (!token.empty()) m.set("token", token);
  return submit(id, m, Options{}, false);
}

Handle Client::ping() {
  Handle id;
  msgpack::Value m = begin("ping", id);
  return submit(id, m, Options{}, false);
}

Handle Client::npc(std::string_view name, std::string_view persona, std::optional<long long> seed) {
  Handle id;
  msgpack::Value m = begin("npc", id);
  m.set("npc", name).set("persona", persona);
  if (seed) m.set("seed", *seed);
  return submit(id, m, Options{}, false);
}

Handle Client::npc_with_actions(std::string_view name, std::string_view persona, const msgpack::Value& actions,
                                std::optional<long long> seed) {
  Handle id;
  msgpack::Value m = begin("npc", id);
  m.set("npc", name).set("persona", persona);
  if (seed) m.set("seed", *seed);
  m.set("actions", actions);
  return submit(id, m, Options{}, false);
}

Handle Client::decide_action(std::string_view name, std::string_view situation,
                             const std::vector<std::string>& actions, const Options& options) {
  Handle id;
  msgpack::Value m = begin("decide", id);
  m.set("npc", name).set("situation", situation);
  if (actions.empty()) {
    m.set("actions", true);
  } else {
    msgpack::Value list = msgpack::Value::array();
    for (const std::string& a : actions) list.push(a);
    m.set("actions", std::move(list));
  }
  return submit(id, m, options, false);
}

Handle Client::act_result(std::string_view name, std::string_view action, std::string_view result) {
  Handle id;
  msgpack::Value m = begin("act_result", id);
  m.set("npc", name).set("name", action).set("result", result);
  return submit(id, m, Options{}, false);
}

Handle Client::chain(const msgpack::Value& steps, const Options& options) {
  Handle id;
  msgpack::Value m = begin("chain", id);
  m.set("steps", steps);
  return submit(id, m, options, false);
}

Handle Client::say(std::string_view name, std::string_view text, const Options& options) {
  Handle id;
  msgpack::Value m = begin("say", id);
  m.set("npc", name).set("text", text);
  return submit(id, m, options, false);
}

Handle Client::decide(std::string_view name, std::string_view situation, const std::vector<std::string>& choices,
                      const Options& options) {
  Handle id;
  msgpack::Value m = begin("decide", id);
  if (!name.empty()) m.set("npc", name);
  msgpack::Value list = msgpack::Value::array();
  for (const std::string& c : choices) list.push(c);
  m.set("situation", situation).set("choices", std::move(list));
  return submit(id, m, options, false);
}

Handle Client::decide_schema(std::string_view name, std::string_view situation, const msgpack::Value& schema,
                             const Options& options) {
  Handle id;
  msgpack::Value m = begin("decide", id);
  if (!name.empty()) m.set("npc", name);
  m.set("situation", situation).set("schema", schema);
  return submit(id, m, options, false);
}

Handle Client::decide_grammar(std::string_view name, std::string_view situation, std::string_view grammar,
                              const Options& options) {
  Handle id;
  msgpack::Value m = begin("decide", id);
  if (!name.empty()) m.set("npc", name);
  m.set("situation", situation).set("grammar", grammar);
  return submit(id, m, options, false);
}

Handle Client::observe(std::string_view name, std::string_view text) {
  Handle id;
  msgpack::Value m = begin("observe", id);
  m.set("npc", name).set("text", text);
  return submit(id, m, Options{}, false);
}

Handle Client::forget(std::string_view name) {
  Handle id;
  msgpack::Value m = begin("forget", id);
  m.set("npc", name);
  return submit(id, m, Options{}, false);
}

Handle Client::save(std::string_view name) {
  Handle id;
  msgpack::Value m = begin("save", id);
  m.set("npc", name);
  return submit(id, m, Options{}, false);
}

Handle Client::load(std::string_view name, std::string_view state) {
  Handle id;
  msgpack::Value m = begin("load", id);
  m.set("npc", name).set("state", msgpack::Value::bin(state));
  return submit(id, m, Options{}, false);
}

Handle Client::stats() {
  Handle id;
  msgpack::Value m = begin("stats", id);
  return submit(id, m, Options{}, false);
}

Handle Client::shutdown() {
  Handle id;
  msgpack::Value m = begin("shutdown", id);
  return submit(id, m, Options{}, false);
}

Handle Client::set_budget(const Budget& budget) {
  Handle id;
  msgpack::Value m = begin("budget", id);
  if (budget.threads) m.set("threads", *budget.threads);
  if (budget.tokens_per_s) m.set("tokens_per_s", *budget.tokens_per_s);
  if (budget.share) m.set("share", *budget.share);
  if (budget.frame_ms) m.set("frame_ms", *budget.frame_ms);
  return submit(id, m, Options{}, false);
}

Handle Client::request(std::string_view op, const msgpack::Value& fields, const Options& options) {
  Handle id;
  msgpack::Value m = begin(op, id);
  for (std::size_t i = 0; fields.is_map() && i < fields.size(); ++i) m.set(fields.key(i).as_str(), fields.val(i));
  return submit(id, m, options, false);
}

bool Client::cancel(Handle h) {
  const Slot* target = find(h);
  if (!target || target->internal || target->fail != Fail::None || !dealer_.is_open()) return false;
  Handle id;
  msgpack::Value m = begin("cancel", id);
  m.set("target", h);
  submit(id, m, Options{}, true);  // its `ok` is ours; the target's `cancelled` is the caller's event
  return true;
}

Handle Client::submit(Handle id, msgpack::Value& message, const Options& options, bool internal) {
  if (options.max_tokens > 0) message.set("max_tokens", options.max_tokens);
  if (options.temperature) message.set("temperature", *options.temperature);
  if (options.seed) message.set("seed", *options.seed);
  if (options.deadline_ms >= 0) message.set("deadline_ms", options.deadline_ms);
  if (options.priority != 0) message.set("priority", options.priority);
  if (options.fallback) message.set("fallback", *options.fallback);
  for (std::size_t i = 0; options.extra.is_map() && i < options.extra.size(); ++i) {
    message.set(options.extra.key(i).as_str(), options.extra.val(i));
  }

  encoded_.clear();
  msgpack::encode(message, encoded_);
  send_encoded(id, options, internal);
  // Where actions may come from: a say/decide asking for them, or a chain's steps.
  if (Slot* slot = find(id)) {
    const std::string_view op = message["op"].as_str();
    const msgpack::Value& wanted = message["actions"];
    if ((op == "say" || op == "decide") && (wanted.as_bool() || wanted.is_array())) {
      slot->acts = op == "say" ? "say" : "decide";
      slot->npc.assign(message["npc"].as_str());
    }
    if (op == "chain") slot->steps = message["steps"];
  }
  return id;
}

Handle Client::send_encoded(Handle id, const Options& options, bool internal) {
  const Clock::time_point now = Clock::now();
  Slot& slot = free_slot();
  slot.id = id;
  slot.internal = internal;
  slot.fallback = options.fallback;
  slot.has_deadline = options.deadline_ms >= 0;
  if (slot.has_deadline) {
    slot.deadline = now + ms(options.deadline_ms);
    next_deadline_ = std::min(next_deadline_, slot.deadline);
  }
  if (!internal) {
    if (open_ == 0) quiet_since_ = now;  // silence counts from when we start waiting
    ++open_;
  }
  if (!dealer_.is_open()) {
    slot.fail = Fail::NotConnected;
    failing_ = true;
  } else if (!dealer_.send(encoded_.data(), encoded_.size())) {
    lose(dealer_.error());
  }
  return id;
}

// --- frame reports ----------------------------------------------------------------------------

void Client::report_frame(double frame_ms) {
  if (!std::isfinite(frame_ms) || frame_ms < 0) return;
  if (frame_count_ == kMaxFrameBatch) {  // a report is still unanswered: keep the newest
    std::memmove(frames_, frames_ + 1, sizeof(double) * (kMaxFrameBatch - 1));
    --frame_count_;
  }
  frames_[frame_count_++] = frame_ms;
}

void Client::send_frames() {
  const int every = std::clamp(config_.frame_report_every, 1, static_cast<int>(kMaxFrameBatch));
  if (frame_report_ != 0 || frame_count_ < every || !dealer_.is_open()) return;
  // {v: 1, id, op: "frame", frame_ms: [float64...]} written in place (msgpack::encode's bytes):
  // building a msgpack::Value would allocate on every report.
  const Handle id = next_id_++;
  encoded_.clear();
  encoded_.push_back(0x84);
  put_fixstr(encoded_, "v");
  encoded_.push_back(0x01);
  put_fixstr(encoded_, "id");
  msgpack::encode(msgpack::Value(id), encoded_);
  put_fixstr(encoded_, "op");
  put_fixstr(encoded_, "frame");
  put_fixstr(encoded_, "frame_ms");
  if (frame_count_ < 16) {
    encoded_.push_back(static_cast<std::uint8_t>(0x90 | frame_count_));
  } else {
    encoded_.insert(encoded_.end(), {0xdc, 0x00, static_cast<std::uint8_t>(frame_count_)});
  }
  for (int i = 0; i < frame_count_; ++i) msgpack::encode(msgpack::Value(frames_[i]), encoded_);
  frame_count_ = 0;
  frame_report_ = id;
  static const Options none;
  send_encoded(id, none, true);
}

// --- slots ----------------------------------------------------------------------------------

Client::Slot& Client::free_slot() {
  for (Slot& slot : slots_) {
    if (slot.id == 0) return slot;
  }
  return slots_.emplace_back();
}

Client::Slot* Client::find(Handle id) {
  if (id == 0) return nullptr;
  for (Slot& slot : slots_) {
    if (slot.id == id) return &slot;
  }
  return nullptr;
}

void Client::release(Slot& slot) {
  if (!slot.internal) --open_;
  slot.id = 0;
  slot.fail = Fail::None;
  slot.has_deadline = false;
  slot.fallback.reset();
  slot.acts = nullptr;
  if (!slot.steps.is_nil()) slot.steps = msgpack::Value();
}

// The action in `answer` (a done or step reply) to a say/decide asking for actions, or null.
const msgpack::Value* Client::action_in(std::string_view op, bool acts, const msgpack::Value& answer) {
  if (!acts || answer["used_fallback"].as_bool() || answer["local"].as_bool()) return nullptr;
  const msgpack::Value* found = op == "say" ? answer.find("action") : op == "decide" ? answer.find("value") : nullptr;
  if (!found || !found->is_map() || !(*found)["name"].is_str()) return nullptr;
  const msgpack::Value* args = found->find("args");
  return args && args->is_map() ? found : nullptr;
}

// --- the per-frame pump ---------------------------------------------------------------------

int Client::poll() {
  if (polling_) return 0;  // a listener called poll() from inside poll()
  polling_ = true;
  const Clock::time_point start = Clock::now();
  int handled = 0;
  if (dealer_.state() != Dealer::State::Closed) {
    if (dealer_.pump()) {
      const Clock::time_point stop = start + std::chrono::microseconds(config_.poll_budget_us);
      const std::uint8_t* body = nullptr;
      std::size_t size = 0;
      while (handled < config_.max_messages_per_poll && dealer_.next(body, size)) {
        dispatch(body, size);
        ++handled;
        if (Clock::now() >= stop) break;
      }
    }
    send_frames();  // after dispatch: the previous report's reply may just have come
    if (dealer_.state() == Dealer::State::Closed) {
      lose(dealer_.error());
    } else {
      watch_silence(start);
    }
  }
  if (failing_) end_failed();
  if (open_ > 0 && start >= next_deadline_) expire(start);
  polling_ = false;
  return handled;
}

void Client::dispatch(const std::uint8_t* body, std::size_t size) {
  const msgpack::Error decoded = msgpack::decode(body, size, reply_, config_.limits);
  if (decoded != msgpack::Error::None) {
    unreadable(body, size, decoded);
    return;
  }
  Slot* slot = find(reply_["id"].as_int());
  const std::string_view event = reply_["event"].as_str();
  const bool ends = event == "ok" || event == "done" || event == "error" || event == "cancelled";
  if (!slot || slot->fail != Fail::None || (!ends && event != "token" && event != "sentence" && event != "step")) {
    ++stray_;
    return;
  }
  const Handle h = slot->id;
  if (!ends) {
    if (slot->internal) return;
    if (event == "token") {
      listener_.on_token(h, reply_["text"].as_str());
    } else if (event == "sentence") {
      listener_.on_sentence(h, reply_["text"].as_str());
    } else {
      listener_.on_step(h, reply_);
      // on_step may have made requests (slots_ may have moved): look the step up again.
      const Slot* again = find(h);
      const long long index = reply_["step"].as_int(-1);
      if (!again || !again->steps.is_array() || index < 0 || static_cast<std::size_t>(index) >= again->steps.size()) return;
      const msgpack::Value& asked = again->steps.at(static_cast<std::size_t>(index));
      const msgpack::Value& wanted = asked["actions"];
      const std::string npc(asked["npc"].as_str());
      if (const msgpack::Value* act = action_in(asked["op"].as_str(), wanted.as_bool() || wanted.is_array(), reply_)) {
        listener_.on_action(h, npc, (*act)["name"].as_str(), (*act)["args"]);
      }
    }
    return;
  }
  const char* const acts = slot->acts;
  const std::string acting_npc = acts ? slot->npc : std::string();
  const bool internal = slot->internal;
  release(*slot);  // before the callback, which may make new requests
  if (h == heartbeat_) heartbeat_ = 0;
  if (h == frame_report_) {
    frame_report_ = 0;
    if (event == "ok") backoff_level_ = static_cast<int>(reply_["backoff_level"].as_int(backoff_level_));
  }
  if (internal) return;
  if (event == "error") {
    listener_.on_error(h, reply_["code"].as_str(), reply_["message"].as_str());
  } else if (event == "cancelled") {
    listener_.on_cancelled(h);
  } else {
    Result result(h, reply_, reply_["value"]);
    result.event = event;
    result.text = reply_["text"].as_str();
    result.finish_reason = reply_["finish_reason"].as_str();
    result.timed_out = reply_["timed_out"].as_bool();
    // The first protocol v1 sidecars left used_fallback out of deadline replies; those
    // replies always carry the fallback.
    const msgpack::Value* used = reply_.find("used_fallback");
    result.used_fallback = used ? used->as_bool() : result.timed_out;
    result.action = acts ? action_in(acts, true, reply_) : nullptr;
    if (result.action) listener_.on_action(h, acting_npc, (*result.action)["name"].as_str(), (*result.action)["args"]);
    listener_.on_done(h, result);
  }
}

// A reply that does not decode still ends the request its leading id names, rather than
// leaving it to the silence timeout; one whose id cannot be read is stray.
void Client::unreadable(const std::uint8_t* body, std::size_t size, msgpack::Error why) {
  long long id = 0;
  Slot* slot = msgpack::leading_int(body, size, "id", id, config_.limits) ? find(id) : nullptr;
  if (!slot || slot->fail != Fail::None) {
    ++stray_;
    return;
  }
  const Handle h = slot->id;
  const bool internal = slot->internal;
  release(*slot);
  if (h == heartbeat_) heartbeat_ = 0;
  if (h == frame_report_) frame_report_ = 0;
  if (!internal) listener_.on_error(h, "bad_reply", std::string("the sidecar's reply did not decode: ") + msgpack::to_string(why));
}

void Client::lose(std::string_view reason) {
  heartbeat_ = 0;
  frame_report_ = 0;
  bool lost_any = false;
  for (Slot& slot : slots_) {
    if (slot.id == 0 || slot.fail != Fail::None) continue;
    if (slot.internal) {
      release(slot);
      continue;
    }
    slot.fail = Fail::Disconnected;
    lost_any = true;
  }
  if (lost_any) {
    lost_reason_.assign(reason.data(), reason.size());
    failing_ = true;
  }
}

void Client::watch_silence(Clock::time_point now) {
  if (dealer_.bytes_received() != seen_bytes_) {
    seen_bytes_ = dealer_.bytes_received();
    quiet_since_ = now;
    return;
  }
  const bool waiting = open_ > 0 || !dealer_.is_open();  // for replies, or for the handshake
  if (!waiting) return;
  const Clock::duration quiet = now - quiet_since_;
  // Silence proves the sidecar gone only once a ping has gone unanswered for the grace time
  // (silence_timeout_ms - heartbeat_ms): pings go out only from poll(), so after a stall of the
  // game thread (a level load) the first poll pings rather than judging a sidecar it never asked.
  const bool unanswered = heartbeat_ != 0 && now - heartbeat_at_ >= ms(config_.silence_timeout_ms - config_.heartbeat_ms);
  if (quiet >= ms(config_.silence_timeout_ms) && (unanswered || !dealer_.is_open())) {
    dealer_.close("no answer from the sidecar for " + std::to_string(config_.silence_timeout_ms) + " ms");
    lose(dealer_.error());
  } else if (quiet >= ms(config_.heartbeat_ms) && heartbeat_ == 0 && dealer_.is_open()) {
    // A live sidecar answers ping from its socket thread at once, even mid-generation.
    msgpack::Value m = begin("ping", heartbeat_);
    heartbeat_at_ = now;
    submit(heartbeat_, m, Options{}, true);
  }
}

void Client::end_failed() {
  failing_ = false;
  for (std::size_t i = 0; i < slots_.size(); ++i) {  // by index: callbacks may add slots
    if (slots_[i].id == 0 || slots_[i].fail == Fail::None) continue;
    const Handle h = slots_[i].id;
    const bool lost = slots_[i].fail == Fail::Disconnected;
    release(slots_[i]);
    // "unavailable": the one local code every client uses for "the sidecar is gone" (docs/PROTOCOL.md).
    const std::string_view why = lost ? std::string_view(lost_reason_) : "no connection to the sidecar is open";
    listener_.on_error(h, "unavailable", why);
  }
}

void Client::expire(Clock::time_point now) {
  static const msgpack::Value no_reply = msgpack::Value::map();
  for (std::size_t i = 0; i < slots_.size(); ++i) {  // by index: callbacks may add slots
    Slot& slot = slots_[i];
    if (slot.id == 0 || !slot.has_deadline || slot.deadline > now || slot.fail != Fail::None) continue;
    // No reply by the deadline: the sidecar is dead, stopped or far behind. Its own deadline
    // reply (same deadline, counted from receipt) would carry the same fallback; if it still
    // comes it is counted in stray().
    const Handle h = slot.id;
    ended_value_ = slot.fallback ? std::move(*slot.fallback) : msgpack::Value();
    release(slot);
    Result result(h, no_reply, ended_value_);
    result.event = "done";
    result.finish_reason = "deadline";
    result.timed_out = result.used_fallback = result.local = true;
    listener_.on_done(h, result);
  }
  next_deadline_ = Clock::time_point::max();
  for (const Slot& slot : slots_) {
    if (slot.id != 0 && slot.has_deadline && slot.fail == Fail::None) next_deadline_ = std::min(next_deadline_, slot.deadline);
  }
}

}  // namespace npcai
