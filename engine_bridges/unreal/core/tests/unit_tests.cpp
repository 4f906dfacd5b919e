// Unit tests of the core: the codec and framing against engine_bridges/conformance/vectors.tsv
// (read at run time: argv[1], else the path compiled in), bounded decoding, and the client,
// dealer and launcher against fake peers on loopback.
//
//   npcai_unit_tests [--vectors PATH] [CASE...]

#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "check.hpp"
#include "npcai/client.hpp"
#include "npcai/launcher.hpp"
#include "npcai/msgpack.hpp"
#include "npcai/process.hpp"
#include "npcai/zmtp.hpp"

using npcai::Handle;
using npcai::msgpack::Value;
using Bytes = std::vector<std::uint8_t>;
using Clock = std::chrono::steady_clock;

namespace {

// --- the vectors ----------------------------------------------------------------------------

std::string g_vectors_path = NPCAI_VECTORS;

const std::map<std::string, Bytes>& vectors() {
  static const std::map<std::string, Bytes> all = [] {
    std::map<std::string, Bytes> out;
    std::ifstream in(g_vectors_path);
    std::string line;
    while (std::getline(in, line)) {
      if (line.empty() || line[0] == '#') continue;
      const std::size_t a = line.find('\t');
      const std::size_t b = line.find('\t', a + 1);
      const std::string hex = line.substr(a + 1, b - a - 1);
      Bytes bytes;
      for (std::size_t i = 0; i + 1 < hex.size(); i += 2) {
        bytes.push_back(static_cast<std::uint8_t>(std::stoul(hex.substr(i, 2), nullptr, 16)));
      }
      out[line.substr(0, a)] = bytes;
    }
    return out;
  }();
  return all;
}

const Bytes& vec(const std::string& name) {
  static const Bytes none;
  const auto it = vectors().find(name);
  return it == vectors().end() ? none : it->second;
}

Value map_of(std::initializer_list<std::pair<const char*, Value>> entries) {
  Value m = Value::map();
  for (const auto& [k, v] : entries) m.set(k, v);
  return m;
}

// Every msgpack.* and message.* vector's value, built by name as its description says.
std::map<std::string, Value> expected_values() {
  std::map<std::string, Value> e;
  e["msgpack.nil"] = Value();
  e["msgpack.true"] = true;
  e["msgpack.false"] = false;
  for (unsigned long long v : {0ull, 1ull, 127ull, 128ull, 255ull, 256ull, 65535ull, 65536ull, 4294967295ull,
                               4294967296ull, 9223372036854775807ull, 9223372036854775808ull,
                               18446744073709551615ull}) {
    e["msgpack.uint." + std::to_string(v)] = v;
  }
  for (long long v : {-1ll, -32ll, -33ll, -128ll, -129ll, -32768ll, -32769ll, -2147483648ll, -2147483649ll,
                      -9223372036854775807ll - 1}) {
    e["msgpack.int." + std::to_string(v)] = v;
  }
  e["msgpack.float32.1.5"] = Value::float32(1.5f);
  e["msgpack.float32.-0.25"] = Value::float32(-0.25f);
  e["msgpack.float64.0.1"] = 0.1;
  e["msgpack.float64.-1e300"] = -1e300;
  e["msgpack.str.empty"] = "";
  e["msgpack.str.hello"] = "hello";
  e["msgpack.str.31"] = std::string(31, 'a');
  e["msgpack.str.32"] = std::string(32, 'a');
  e["msgpack.str.255"] = std::string(255, 'd');
  e["msgpack.str.256"] = std::string(256, 'b');
  e["msgpack.str.65536"] = std::string(65536, 'c');
  e["msgpack.str.utf8"] = "h\xc3\xa9llo \xe2\x9c\x93";
  e["msgpack.str.nul"] = std::string("a\0b", 3);
  e["msgpack.bin.empty"] = Value::bin("");
  e["msgpack.bin.3"] = Value::bin(std::string("\x00\x01\xff", 3));
  std::string all_bytes;
  for (int i = 0; i < 256; ++i) all_bytes += static_cast<char>(i);
  e["msgpack.bin.255"] = Value::bin(std::string(255, '\0'));
  e["msgpack.bin.256"] = Value::bin(all_bytes);
  e["msgpack.bin.65536"] = Value::bin(std::string(65536, '\0'));
  e["msgpack.array.empty"] = Value::array();
  e["msgpack.array.mixed"] = Value::array({1, "a", nullptr, true});
  Value sixteen = Value::array();
  for (int i = 0; i < 16; ++i) sixteen.push(i);
  e["msgpack.array.16"] = sixteen;
  e["msgpack.map.empty"] = Value::map();
  e["msgpack.map.one"] = map_of({{"a", 1}});
  Value m16 = Value::map();
  for (int i = 0; i < 16; ++i) m16.set((i < 10 ? "k0" : "k") + std::to_string(i), i);
  e["msgpack.map.16"] = m16;
  e["msgpack.nested"] = map_of({{"a", Value::array({1, map_of({{"b", Value::array({nullptr, 2.5})}})})}});

  e["message.request.hello"] = map_of({{"v", 1}, {"id", 1}, {"op", "hello"}, {"client", "godot"}});
  e["message.request.npc.actions"] = map_of(
      {{"v", 1}, {"id", 8}, {"op", "npc"}, {"npc", "brom"}, {"persona", "You are Brom."},
       {"actions", Value::array({map_of({{"name", "give"},
                                         {"args", map_of({{"type", "object"},
                                                          {"properties", map_of({{"item", map_of({{"enum",
                                                              Value::array({"sword", "shield"})}})}})}})}})})}});
  e["message.request.say.actions"] =
      map_of({{"v", 1}, {"id", 9}, {"op", "say"}, {"npc", "brom"}, {"text", "A shield!"}, {"actions", true}});
  e["message.request.chain"] = map_of(
      {{"v", 1}, {"id", 10}, {"op", "chain"},
       {"steps", Value::array({map_of({{"op", "decide"}, {"as", "mood"}, {"situation", "Rain."},
                                       {"choices", Value::array({"calm", "angry"})}}),
                               map_of({{"op", "say"}, {"as", "line"}, {"npc", "brom"}, {"text", "({mood})"}})})},
       {"deadline_ms", 1500}});
  e["message.request.decide.actions"] =
      map_of({{"v", 1}, {"id", 11}, {"op", "decide"}, {"npc", "brom"}, {"situation", "20 gold."},
              {"actions", Value::array({"give"})}, {"deadline_ms", 500},
              {"fallback", map_of({{"name", "wait"}, {"args", Value::map()}})}});
  e["message.request.act_result"] = map_of({{"v", 1}, {"id", 12}, {"op", "act_result"}, {"npc", "brom"},
                                            {"name", "give"}, {"result", "The customer has the shield."}});
  e["message.reply.done.decide.actions"] =
      map_of({{"v", 1}, {"id", 11}, {"event", "done"},
              {"value", map_of({{"name", "give"}, {"args", map_of({{"item", "shield"}})}})},
              {"probs", map_of({{"give", 1.0}})}});
  e["message.reply.step.token"] =
      map_of({{"v", 1}, {"id", 10}, {"event", "token"}, {"text", " Aye"}, {"step", 1}});
  e["message.reply.sentence"] = map_of({{"v", 1}, {"id", 9}, {"event", "sentence"}, {"text", " Aye."}});
  e["message.reply.step"] = map_of({{"v", 1}, {"id", 10}, {"event", "step"}, {"step", 0}, {"as", "mood"},
                                    {"value", "calm"}, {"used_fallback", false}});
  e["message.reply.done.action"] =
      map_of({{"v", 1}, {"id", 9}, {"event", "done"}, {"text", "Aye."}, {"value", "Aye."},
              {"action", map_of({{"name", "give"}, {"args", map_of({{"item", "shield"}})}})}});
  e["message.reply.done.chain"] =
      map_of({{"v", 1}, {"id", 10}, {"event", "done"}, {"value", map_of({{"mood", "calm"}, {"line", "Aye."}})},
              {"results", map_of({{"mood", "calm"}, {"line", "Aye."}})}});
  e["message.request.ping"] = map_of({{"v", 1}, {"id", 2}, {"op", "ping"}});
  e["message.request.npc"] =
      map_of({{"v", 1}, {"id", 3}, {"op", "npc"}, {"npc", "brom"}, {"persona", "You are Brom."}, {"seed", 7}});
  e["message.request.say"] = map_of({{"v", 1}, {"id", 4}, {"op", "say"}, {"npc", "brom"}, {"text", "Hello!"},
                                     {"max_tokens", 32}, {"temperature", 0.7}, {"deadline_ms", 2000},
                                     {"fallback", "..."}});
  e["message.request.decide.choices"] =
      map_of({{"v", 1}, {"id", 5}, {"op", "decide"}, {"npc", "grik"}, {"situation", "A sword!"},
              {"choices", Value::array({"attack", "flee"})}, {"deadline_ms", 150}, {"fallback", "flee"}});
  e["message.request.decide.schema"] = map_of(
      {{"v", 1}, {"id", 6}, {"op", "decide"}, {"situation", "Night."},
       {"schema", map_of({{"type", "object"},
                          {"properties", map_of({{"act", map_of({{"enum", Value::array({"a", "b"})}})}})},
                          {"required", Value::array({"act"})}})}});
  e["message.request.cancel"] = map_of({{"v", 1}, {"id", 7}, {"op", "cancel"}, {"target", 4}});
  e["message.reply.ok"] = map_of({{"v", 1}, {"id", 2}, {"event", "ok"}});
  e["message.reply.token"] = map_of({{"v", 1}, {"id", 4}, {"event", "token"}, {"text", " Aye"}});
  e["message.reply.done.say"] =
      map_of({{"v", 1}, {"id", 4}, {"event", "done"}, {"text", "Aye."}, {"value", "Aye."}, {"tokens", 3},
              {"finish_reason", "stop"}, {"timed_out", false}, {"used_fallback", false},
              {"timing", map_of({{"queue_ms", 0.5}, {"prefill_ms", 40.25}, {"ttft_ms", 41.0}, {"total_ms", 60.5}})}});
  e["message.reply.done.choices"] =
      map_of({{"v", 1}, {"id", 5}, {"event", "done"}, {"value", "flee"}, {"text", "flee"},
              {"probs", map_of({{"attack", 0.25}, {"flee", 0.75}})}});
  e["message.reply.done.timed_out"] =
      map_of({{"v", 1}, {"id", 5}, {"event", "done"}, {"value", "flee"}, {"text", ""}, {"tokens", 0},
              {"timed_out", true}, {"used_fallback", true}, {"finish_reason", "deadline"},
              {"timing", map_of({{"queue_ms", 0.5}, {"total_ms", 150.25}})}});
  e["message.reply.error"] = map_of({{"v", 1}, {"id", nullptr}, {"event", "error"}, {"code", "bad_request"},
                                     {"message", "frame is not msgpack"}});
  e["message.reply.cancelled"] = map_of({{"v", 1}, {"id", 4}, {"event", "cancelled"}});
  e["message.reply.local.unavailable"] = map_of({{"v", 1}, {"id", 4}, {"event", "error"}, {"code", "unavailable"},
                                                 {"message", "the sidecar is gone"}, {"local", true}});
  e["message.reply.local.fallback"] =
      map_of({{"v", 1}, {"id", 5}, {"event", "done"}, {"value", "flee"}, {"text", ""}, {"timed_out", false},
              {"used_fallback", true}, {"finish_reason", "unavailable"}, {"local", true}});
  return e;
}

Bytes encoded(const Value& v) {
  Bytes out;
  npcai::msgpack::encode(v, out);
  return out;
}

npcai::msgpack::Error decode(const Bytes& b, Value& out, const npcai::msgpack::Limits& limits = {}) {
  return npcai::msgpack::decode(b.data(), b.size(), out, limits);
}

std::string hex(const Bytes& b) {
  static const char* digits = "0123456789abcdef";
  std::string s;
  for (std::size_t i = 0; i < b.size() && i < 48; ++i) s += {digits[b[i] >> 4], digits[b[i] & 15]};
  return b.size() > 48 ? s + "..." : s;
}

bool starts_with(const std::string& s, const std::string& prefix) { return s.compare(0, prefix.size(), prefix) == 0; }

}  // namespace

// --- codec ----------------------------------------------------------------------------------

CASE(vectors_file_read) {
  REQUIRE(!vectors().empty(), "cannot read " + g_vectors_path);
  REQUIRE(vectors().count("zmtp.greeting.null_client") == 1);
}

CASE(msgpack_encode_matches_vectors) {
  const auto expected = expected_values();
  int checked = 0;
  for (const auto& [name, bytes] : vectors()) {
    if (!starts_with(name, "msgpack.") && !starts_with(name, "message.")) continue;
    if (starts_with(name, "msgpack.refused.")) continue;
    const auto it = expected.find(name);
    CHECK(it != expected.end(), "no expected value for vector " + name);
    if (it == expected.end()) continue;
    CHECK(encoded(it->second) == bytes, name + ": got " + hex(encoded(it->second)));
    ++checked;
  }
  for (const auto& entry : expected) CHECK(vectors().count(entry.first) == 1, "vector missing: " + entry.first);
  CHECK(checked == static_cast<int>(expected.size()));
}

CASE(msgpack_decode_matches_vectors) {
  const auto expected = expected_values();
  for (const auto& [name, value] : expected) {
    Value got;
    const auto err = decode(vec(name), got);
    CHECK(err == npcai::msgpack::Error::None, name + ": " + npcai::msgpack::to_string(err));
    CHECK(got == value, name);
  }
}

CASE(msgpack_refuses_the_refused_vectors) {
  // A str must be UTF-8: bytes that are not (overlong forms and surrogates included) are refused.
  int refused = 0;
  for (const auto& [name, bytes] : vectors()) {
    if (!starts_with(name, "msgpack.refused.")) continue;
    Value v;
    CHECK(decode(bytes, v) == npcai::msgpack::Error::NotUtf8, name);
    ++refused;
  }
  CHECK(refused >= 3, std::to_string(refused) + " refused vectors");
}

CASE(msgpack_test_suite) {
  // The public vectors of msgpack-test-suite, converted by tests/msgpack_suite.py into
  // "name <TAB> form <TAB> canonical encoding of its value, or refuse" and named by
  // $NPCAI_MSGPACK_SUITE (tests/test_bridge_unreal.py sets it; without it this case has nothing to do).
  const char* path = std::getenv("NPCAI_MSGPACK_SUITE");
  if (path == nullptr || *path == '\0') return;
  std::ifstream in(path);
  REQUIRE(in.good(), std::string("cannot read ") + path);
  const auto unhex = [](const std::string& text) {
    Bytes out;
    for (std::size_t i = 0; i + 1 < text.size(); i += 2)
      out.push_back(static_cast<std::uint8_t>(std::stoul(text.substr(i, 2), nullptr, 16)));
    return out;
  };
  std::string line;
  int forms = 0, failed = 0;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    const std::size_t a = line.find('\t'), b = line.find('\t', a + 1);
    const std::string name = line.substr(0, a), want = line.substr(b + 1);
    const Bytes form = unhex(line.substr(a + 1, b - a - 1));
    Value got;
    const auto err = decode(form, got);
    std::string why;
    if (want == "refuse") {
      if (err == npcai::msgpack::Error::None) why = "decoded an ext form instead of refusing it";
    } else if (err != npcai::msgpack::Error::None) {
      why = std::string("refused: ") + npcai::msgpack::to_string(err);
    } else if (encoded(got) != unhex(want)) {
      why = "decoded to a value that encodes as " + hex(encoded(got)) + ", expected " + want;
    }
    ++forms;
    if (why.empty()) {
      std::printf("ok suite %s\n", name.c_str());
    } else {
      ++failed;
      std::printf("FAIL suite %s: %s\n", name.c_str(), why.c_str());
    }
  }
  CHECK(failed == 0, std::to_string(failed) + " of " + std::to_string(forms) + " forms failed");
  CHECK(forms > 0, "no forms read");
}

CASE(msgpack_accessors) {
  Value reply;
  REQUIRE(decode(vec("message.reply.done.choices"), reply) == npcai::msgpack::Error::None);
  CHECK(reply["event"].as_str() == "done");
  CHECK(reply["id"].as_int() == 5);
  CHECK(reply["probs"]["flee"].as_double() == 0.75);
  CHECK(reply["missing"].is_nil());
  CHECK(reply.find("missing") == nullptr);
  Value big;
  REQUIRE(decode(vec("msgpack.uint.18446744073709551615"), big) == npcai::msgpack::Error::None);
  CHECK(big.type() == npcai::msgpack::Type::UInt && big.as_uint() == 18446744073709551615ull);
  CHECK(big.as_int(-7) == -7);  // does not fit: the default
}

CASE(msgpack_reused_value_has_no_stale_items) {
  // Decoding into one Value again and again (as the client does) must not leak earlier entries.
  Value v;
  REQUIRE(decode(vec("message.reply.done.say"), v) == npcai::msgpack::Error::None);
  REQUIRE(decode(vec("message.reply.token"), v) == npcai::msgpack::Error::None);
  CHECK(v.size() == 4);
  CHECK(v.find("timing") == nullptr);
  CHECK(v == expected_values()["message.reply.token"]);
  REQUIRE(decode(vec("message.reply.done.say"), v) == npcai::msgpack::Error::None);
  CHECK(v == expected_values()["message.reply.done.say"]);
  REQUIRE(decode(vec("message.reply.ok"), v) == npcai::msgpack::Error::None);
  v.set("extra", 1);  // building on a reused Value appends after the live entries
  CHECK(encoded(v) == encoded(map_of({{"v", 1}, {"id", 2}, {"event", "ok"}, {"extra", 1}})));
}

CASE(msgpack_rejects_truncated_input) {
  // Every strict prefix of every vector is incomplete.
  for (const auto& [name, bytes] : vectors()) {
    if (!starts_with(name, "msgpack.") && !starts_with(name, "message.")) continue;
    const std::size_t step = bytes.size() > 512 ? 97 : 1;  // the 64 KiB vectors: sample the prefixes
    for (std::size_t n = 0; n < bytes.size(); n += step) {
      Value v;
      const auto err = npcai::msgpack::decode(bytes.data(), n, v);
      CHECK(err == npcai::msgpack::Error::Truncated, name + " prefix " + std::to_string(n));
    }
  }
}

CASE(msgpack_rejects_bad_bytes) {
  using npcai::msgpack::Error;
  Value v;
  CHECK(decode({0xc0, 0xc0}, v) == Error::TrailingBytes);
  CHECK(decode({0xc1}, v) == Error::BadType);
  CHECK(decode({0xd4, 0x01, 0x00}, v) == Error::BadType);        // fixext 1
  CHECK(decode({0xc7, 0x00, 0x01}, v) == Error::BadType);        // ext 8
  CHECK(decode({0x91, 0xd8, 0x01}, v) == Error::BadType);        // fixext 16 inside an array
  CHECK(decode({0xdd, 0xff, 0xff, 0xff, 0xff}, v) == Error::TooLong);  // 4G entries claimed
  CHECK(decode({0xdc, 0x01, 0x00, 0xc0}, v) == Error::Truncated);     // 256 claimed, 1 present
  CHECK(decode({0xdb, 0x7f, 0xff, 0xff, 0xff}, v) == Error::TooLong);  // 2 GiB string claimed
  npcai::msgpack::Limits small;
  small.max_container_len = 2;
  small.max_bytes_len = 3;
  CHECK(decode({0x93, 0x01, 0x02, 0x03}, v, small) == Error::TooLong);
  CHECK(decode({0xa4, 'a', 'b', 'c', 'd'}, v, small) == Error::TooLong);
  CHECK(decode({0x92, 0x01, 0x02}, v, small) == Error::None);
}

CASE(msgpack_depth_limit) {
  using npcai::msgpack::Error;
  const auto nested = [](int depth) {
    Bytes b(static_cast<std::size_t>(depth), 0x91);  // [[[...]]]
    b.push_back(0xc0);
    return b;
  };
  Value v;
  CHECK(decode(nested(32), v) == Error::None);
  CHECK(decode(nested(33), v) == Error::TooDeep);
  CHECK(decode(nested(100000), v) == Error::TooDeep);  // no stack overflow
  Bytes maps;
  for (int i = 0; i < 40; ++i) maps.insert(maps.end(), {0x81, 0xa1, 'k'});
  maps.push_back(0x01);
  CHECK(decode(maps, v) == Error::TooDeep);
}

CASE(msgpack_garbage_never_crashes) {
  // Random and mutated inputs: decoding returns (an error or a value); whatever decodes
  // re-encodes to bytes that decode to the same value.
  std::uint64_t state = 0x9e3779b97f4a7c15ull;
  const auto rnd = [&state] {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return state;
  };
  const Bytes seed = vec("message.reply.done.say");
  int decoded = 0;
  for (int round = 0; round < 30000; ++round) {
    Bytes b;
    if (round % 2) {
      b = seed;
      for (int k = 0; k < 3; ++k) b[rnd() % b.size()] = static_cast<std::uint8_t>(rnd());
    } else {
      b.resize(rnd() % 40);
      for (auto& c : b) c = static_cast<std::uint8_t>(rnd() % 4 ? 0x80 + rnd() % 0x60 : rnd());
    }
    Value v;
    if (decode(b, v) != npcai::msgpack::Error::None) continue;
    ++decoded;
    Value again;
    CHECK(decode(encoded(v), again) == npcai::msgpack::Error::None && again == v, hex(b));
  }
  CHECK(decoded > 0);
}

// --- framing --------------------------------------------------------------------------------

CASE(zmtp_matches_vectors) {
  Bytes g;
  npcai::zmtp::append_greeting(g);
  CHECK(g == vec("zmtp.greeting.null_client"));
  CHECK(npcai::zmtp::greeting_ok(g.data()));

  Bytes ready;
  npcai::zmtp::append_ready(ready, "DEALER");
  CHECK(ready == vec("zmtp.ready.dealer"));

  const Bytes& router = vec("zmtp.ready.router");
  npcai::zmtp::Frame f;
  std::size_t used = 0;
  REQUIRE(npcai::zmtp::parse_frame(router.data(), router.size(), 1024, f, used) == npcai::zmtp::Parse::Ok);
  CHECK(used == router.size() && f.command && !f.more);
  CHECK(npcai::zmtp::ready_socket_type(f.body, f.size) == "ROUTER");

  const Bytes& ping = vec("message.request.ping");
  Bytes short_frame;
  npcai::zmtp::append_frame(short_frame, ping.data(), ping.size());
  CHECK(short_frame == vec("zmtp.frame.short"));
  REQUIRE(npcai::zmtp::parse_frame(short_frame.data(), short_frame.size(), 1024, f, used) == npcai::zmtp::Parse::Ok);
  CHECK(!f.command && !f.more && Bytes(f.body, f.body + f.size) == ping);

  const Bytes& long_frame = vec("zmtp.frame.long");
  REQUIRE(npcai::zmtp::parse_frame(long_frame.data(), long_frame.size(), 1024, f, used) == npcai::zmtp::Parse::Ok);
  CHECK(used == long_frame.size() && f.size == 332);
  const Bytes long_body(f.body, f.body + f.size);
  Value say = map_of({{"v", 1}, {"id", 9}, {"op", "say"}, {"npc", "brom"}, {"text", std::string(300, 'x')}});
  CHECK(encoded(say) == long_body);
  Bytes relong;
  npcai::zmtp::append_frame(relong, long_body.data(), long_body.size());
  CHECK(relong == long_frame);

  // Across the short/long boundary: a body of 255 bytes is the largest short frame, 256 the smallest long one.
  for (const auto& [name, text, flags] : {std::tuple<const char*, std::size_t, std::uint8_t>{"zmtp.frame.255", 224, 0x00},
                                          {"zmtp.frame.256", 225, 0x02}}) {
    const Bytes body = encoded(map_of({{"v", 1}, {"id", 9}, {"op", "say"}, {"npc", "brom"}, {"text", std::string(text, 'x')}}));
    Bytes built;
    npcai::zmtp::append_frame(built, body.data(), body.size());
    CHECK(built == vec(name) && built[0] == flags, std::string(name) + ": " + hex(built));
    const Bytes& framed = vec(name);
    REQUIRE(npcai::zmtp::parse_frame(framed.data(), framed.size(), 1024, f, used) == npcai::zmtp::Parse::Ok);
    CHECK(used == framed.size() && Bytes(f.body, f.body + f.size) == body, name);
  }

  const Bytes& multi = vec("zmtp.frame.multipart");
  Bytes built;
  npcai::zmtp::append_frame(built, reinterpret_cast<const std::uint8_t*>("A"), 1, true);
  npcai::zmtp::append_frame(built, reinterpret_cast<const std::uint8_t*>("BC"), 2);
  CHECK(built == multi);
  REQUIRE(npcai::zmtp::parse_frame(multi.data(), multi.size(), 1024, f, used) == npcai::zmtp::Parse::Ok);
  CHECK(f.more && f.size == 1 && f.body[0] == 'A');
  REQUIRE(npcai::zmtp::parse_frame(multi.data() + used, multi.size() - used, 1024, f, used) == npcai::zmtp::Parse::Ok);
  CHECK(!f.more && f.size == 2 && f.body[0] == 'B' && f.body[1] == 'C');

  const Bytes& empty = vec("zmtp.frame.empty");
  Bytes built_empty;
  npcai::zmtp::append_frame(built_empty, nullptr, 0);
  CHECK(built_empty == empty);
  REQUIRE(npcai::zmtp::parse_frame(empty.data(), empty.size(), 1024, f, used) == npcai::zmtp::Parse::Ok);
  CHECK(f.size == 0 && used == 2);
}

CASE(zmtp_rejects_bad_frames_and_greetings) {
  using npcai::zmtp::Parse;
  npcai::zmtp::Frame f;
  std::size_t used = 0;
  const Bytes reserved = {0x08, 0x00};
  CHECK(npcai::zmtp::parse_frame(reserved.data(), reserved.size(), 1024, f, used) == Parse::Malformed);
  const Bytes huge = {0x02, 0, 0, 0, 1, 0, 0, 0, 0};  // 4 GiB announced: refused before waiting for it
  CHECK(npcai::zmtp::parse_frame(huge.data(), huge.size(), 1 << 20, f, used) == Parse::TooLarge);
  const Bytes partial = {0x00, 0x05, 'a', 'b'};
  CHECK(npcai::zmtp::parse_frame(partial.data(), partial.size(), 1024, f, used) == Parse::NeedMore && used == 7);
  const Bytes& long_frame = vec("zmtp.frame.long");
  CHECK(npcai::zmtp::parse_frame(long_frame.data(), 5, 1024, f, used) == Parse::NeedMore && used == 0);

  Bytes g = vec("zmtp.greeting.null_client");
  g[10] = 2;
  CHECK(!npcai::zmtp::greeting_ok(g.data()));  // ZMTP 2
  g = vec("zmtp.greeting.null_client");
  std::copy_n("CURVE", 5, g.begin() + 12);
  CHECK(!npcai::zmtp::greeting_ok(g.data()));
  g = vec("zmtp.greeting.null_client");
  g[0] = 'G';
  CHECK(!npcai::zmtp::greeting_ok(g.data()));

  // READY with a property before Socket-Type (libzmq may send Identity), and broken ones.
  Bytes body = {5, 'R', 'E', 'A', 'D', 'Y', 8, 'I', 'd', 'e', 'n', 't', 'i', 't', 'y', 0, 0, 0, 0};
  const Bytes tail = {11, 's', 'o', 'c', 'k', 'e', 't', '-', 't', 'y', 'p', 'e', 0, 0, 0, 6, 'R', 'O', 'U', 'T', 'E', 'R'};
  body.insert(body.end(), tail.begin(), tail.end());
  CHECK(npcai::zmtp::ready_socket_type(body.data(), body.size()) == "ROUTER");
  CHECK(npcai::zmtp::ready_socket_type(body.data(), body.size() - 1).empty());
  body[1] = 'X';
  CHECK(npcai::zmtp::ready_socket_type(body.data(), body.size()).empty());
}

// --- a fake sidecar on loopback ---------------------------------------------------------------

namespace {

// A ZMTP ROUTER stand-in with blocking sockets, driven by a script on its own thread while the
// test thread polls the client like a game loop.
class FakeSidecar {
 public:
  FakeSidecar() {
    listener_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::bind(listener_, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
    ::listen(listener_, 4);
    socklen_t len = sizeof addr;
    ::getsockname(listener_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
  }
  ~FakeSidecar() {
    if (script_.joinable()) script_.join();
    close_client();
    ::close(listener_);
  }

  std::string endpoint() const { return "tcp://127.0.0.1:" + std::to_string(port_); }
  void run(std::function<void(FakeSidecar&)> script) {
    script_ = std::thread([this, script] { script(*this); });
  }

  bool accept() {
    client_ = ::accept(listener_, nullptr, nullptr);
    timeval tv{5, 0};  // a broken test must not hang
    ::setsockopt(client_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return client_ >= 0;
  }
  // Greets like libzmq, reads the client's greeting and READY (kept for checking), answers READY.
  bool handshake() {
    Bytes greeting;
    Bytes ready;
    npcai::zmtp::append_greeting(greeting);
    npcai::zmtp::append_ready(ready, "ROUTER");
    return write(greeting) && read_exact(npcai::zmtp::kGreetingSize, peer_greeting) && read_frame(peer_ready) &&
           write(ready);
  }
  bool read_frame(Bytes& body) {
    Bytes head;
    if (!read_exact(2, head)) return false;
    std::uint64_t size = head[1];
    if (head[0] & 0x02) {
      Bytes rest;
      if (!read_exact(7, rest)) return false;
      size = head[1];
      for (std::uint8_t b : rest) size = (size << 8) | b;
    }
    return read_exact(static_cast<std::size_t>(size), body);
  }
  bool send(const Bytes& body) {
    Bytes out;
    npcai::zmtp::append_frame(out, body.data(), body.size());
    return write(out);
  }
  bool write(const Bytes& b) { return ::send(client_, b.data(), b.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(b.size()); }
  void close_client() {
    if (client_ >= 0) ::close(client_);
    client_ = -1;
  }

  Bytes peer_greeting;
  Bytes peer_ready;
  std::mutex mutex;
  std::vector<Bytes> received;  // frames the script read, under `mutex`

  void record(const Bytes& frame) {
    std::lock_guard<std::mutex> lock(mutex);
    received.push_back(frame);
  }
  std::size_t received_count() {
    std::lock_guard<std::mutex> lock(mutex);
    return received.size();
  }

 private:
  int listener_ = -1;
  int client_ = -1;
  int port_ = 0;
  std::thread script_;

  bool read_exact(std::size_t n, Bytes& out) {
    out.resize(n);
    std::size_t got = 0;
    while (got < n) {
      const ssize_t r = ::recv(client_, out.data() + got, n - got, 0);
      if (r <= 0) return false;
      got += static_cast<std::size_t>(r);
    }
    return true;
  }
};

// Records every event, copying what the callbacks only lend.
struct Recorder : npcai::Listener {
  struct End {
    std::string kind;  // done, error, cancelled
    std::string event, code, message, text, finish_reason;
    Value value, reply;
    bool timed_out = false, used_fallback = false, local = false;
    double prob_flee = -1;
    Clock::time_point at;
  };
  std::map<Handle, std::string> tokens;
  std::map<Handle, End> ends;
  std::vector<Handle> order;

  void on_token(Handle h, std::string_view text) override { tokens[h] += text; }
  void on_done(Handle h, const npcai::Result& r) override {
    End& e = add(h, "done");
    e.event = r.event;
    e.text = r.text;
    e.finish_reason = r.finish_reason;
    e.value = r.value;
    e.reply = r.reply;
    e.timed_out = r.timed_out;
    e.used_fallback = r.used_fallback;
    e.local = r.local;
    e.prob_flee = r.prob("flee");
  }
  void on_error(Handle h, std::string_view code, std::string_view message) override {
    End& e = add(h, "error");
    e.code = code;
    e.message = message;
  }
  void on_cancelled(Handle h) override { add(h, "cancelled"); }

  End& add(Handle h, const char* kind) {
    order.push_back(h);
    End& e = ends[h];
    e.kind = kind;
    e.at = Clock::now();
    return e;
  }
};

template <class Done>
bool poll_until(npcai::Client& client, Done done, int timeout_ms = 3000) {
  const auto until = Clock::now() + std::chrono::milliseconds(timeout_ms);
  while (!done()) {
    if (Clock::now() > until) return false;
    client.poll();
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return true;
}

}  // namespace

// --- the client against fake peers --------------------------------------------------------------

CASE(client_wire_bytes_and_replies) {
  FakeSidecar fake;
  std::atomic<bool> replies_sent{false};
  fake.run([&](FakeSidecar& f) {
    if (!f.accept() || !f.handshake()) return;
    Bytes frame;
    for (int i = 0; i < 7 && f.read_frame(frame); ++i) f.record(frame);
    const auto send_value = [&f](const Value& v) { f.send(encoded(v)); };
    for (const char* name : {"message.reply.ok", "message.reply.token", "message.reply.done.say",
                             "message.reply.done.choices", "message.reply.done.timed_out", "message.reply.error"}) {
      f.send(vec(name));
    }
    // A deadline reply without used_fallback (as the first v1 sidecars sent it), a cancelled,
    // an error, then the ok of our cancel (id 7, which the caller never sees).
    send_value(map_of({{"v", 1}, {"id", 6}, {"event", "done"}, {"value", "x"}, {"text", ""}, {"timed_out", true},
                       {"finish_reason", "deadline"}}));
    send_value(map_of({{"v", 1}, {"id", 3}, {"event", "cancelled"}}));
    send_value(map_of({{"v", 1}, {"id", 1}, {"event", "error"}, {"code", "unauthorized"}, {"message", "no"}}));
    send_value(map_of({{"v", 1}, {"id", 7}, {"event", "ok"}, {"target", 4}, {"found", true}}));
    replies_sent = true;
    // A long (> 255 bytes) frame.
    if (f.read_frame(frame)) send_value(map_of({{"v", 1}, {"id", 8}, {"event", "ok"}, {"pad", std::string(400, 'p')}}));
    // Then drop the connection with two requests open.
    if (f.read_frame(frame) && f.read_frame(frame)) f.close_client();
  });

  Recorder events;
  npcai::Client client(events);
  REQUIRE(client.connect(fake.endpoint()));
  REQUIRE(poll_until(client, [&] { return client.state() == npcai::Client::State::Open; }));
  CHECK(fake.peer_greeting == vec("zmtp.greeting.null_client"));
  Bytes ready_frame = {0x04, static_cast<std::uint8_t>(fake.peer_ready.size())};
  ready_frame.insert(ready_frame.end(), fake.peer_ready.begin(), fake.peer_ready.end());
  CHECK(ready_frame == vec("zmtp.ready.dealer"));

  // The same requests as the message.request.* vectors, in id order 1..7.
  CHECK(client.hello("godot") == 1);
  CHECK(client.ping() == 2);
  CHECK(client.npc("brom", "You are Brom.", 7) == 3);
  npcai::Options say;
  say.max_tokens = 32;
  say.temperature = 0.7;
  say.deadline_ms = 2000;
  say.fallback = Value("...");
  CHECK(client.say("brom", "Hello!", say) == 4);
  npcai::Options choose;
  choose.deadline_ms = 150;
  choose.fallback = Value("flee");
  CHECK(client.decide("grik", "A sword!", {"attack", "flee"}, choose) == 5);
  const Value schema = map_of({{"type", "object"},
                               {"properties", map_of({{"act", map_of({{"enum", Value::array({"a", "b"})}})}})},
                               {"required", Value::array({"act"})}});
  CHECK(client.decide_schema("", "Night.", schema) == 6);
  CHECK(client.cancel(4));
  CHECK(client.pending() == 6);

  REQUIRE(poll_until(client, [&] { return replies_sent && client.pending() == 0; }));
  {
    std::lock_guard<std::mutex> lock(fake.mutex);
    const char* names[] = {"message.request.hello", "message.request.ping", "message.request.npc",
                           "message.request.say", "message.request.decide.choices",
                           "message.request.decide.schema", "message.request.cancel"};
    REQUIRE(fake.received.size() == 7);
    for (int i = 0; i < 7; ++i) CHECK(fake.received[i] == vec(names[i]), std::string(names[i]) + ": " + hex(fake.received[i]));
  }
  CHECK(events.ends[2].kind == "done" && events.ends[2].event == "ok");
  CHECK(events.tokens[4] == " Aye");
  CHECK(events.ends[4].kind == "done" && events.ends[4].text == "Aye." && events.ends[4].value == Value("Aye."));
  CHECK(!events.ends[4].used_fallback && events.ends[4].reply["timing"]["ttft_ms"].as_double() == 41.0);
  CHECK(events.ends[5].value == Value("flee") && events.ends[5].prob_flee == 0.75);
  CHECK(events.ends[6].timed_out && events.ends[6].used_fallback && !events.ends[6].local);
  CHECK(events.ends[3].kind == "cancelled");
  CHECK(events.ends[1].kind == "error" && events.ends[1].code == "unauthorized" && events.ends[1].message == "no");
  CHECK(events.ends.count(7) == 0);  // the cancel request is the client's own
  CHECK(events.order == std::vector<Handle>({2, 4, 5, 6, 3, 1}));
  CHECK(client.stray() == 2);  // the second ending for id 5, and the error with id nil

  const Handle ping = client.ping();
  REQUIRE(poll_until(client, [&] { return events.ends.count(ping) == 1; }));
  CHECK(events.ends[ping].reply["pad"].as_str().size() == 400);

  const Handle a = client.ping();
  const Handle b = client.say("brom", "Hi", say);
  REQUIRE(poll_until(client, [&] { return events.ends.count(a) && events.ends.count(b); }));
  CHECK(events.ends[a].kind == "error" && events.ends[a].code == "unavailable");
  CHECK(events.ends[b].kind == "error" && events.ends[b].code == "unavailable");
  CHECK(events.ends[b].message == "the sidecar closed the connection", events.ends[b].message);
  CHECK(client.state() == npcai::Client::State::Closed && client.pending() == 0);
}

// The new ops' bytes (ids 8..12 after seven pings), and sentence, step and action events.
CASE(client_actions_sentences_and_steps) {
  FakeSidecar fake;
  std::atomic<bool> replies_sent{false};
  fake.run([&](FakeSidecar& f) {
    if (!f.accept() || !f.handshake()) return;
    Bytes frame;
    for (int i = 0; i < 12 && f.read_frame(frame); ++i) {
      if (i >= 7) f.record(frame);
    }
    for (int id = 1; id <= 8; ++id) f.send(encoded(map_of({{"v", 1}, {"id", id}, {"event", "ok"}})));
    for (const char* name : {"message.reply.token", "message.reply.sentence", "message.reply.step",
                             "message.reply.step.token", "message.reply.done.chain",
                             "message.reply.done.decide.actions"}) {
      f.send(vec(name));
    }
    // id 4 is not open: its token counts as stray. Then the say with actions (id 9) ends.
    f.send(vec("message.reply.done.action"));
    f.send(encoded(map_of({{"v", 1}, {"id", 12}, {"event", "ok"}})));
    replies_sent = true;
  });

  struct Acting : Recorder {
    std::vector<std::string> acts, sentences, steps;
    void on_sentence(Handle h, std::string_view text) override {
      sentences.push_back(std::to_string(h) + ":" + std::string(text));
    }
    void on_step(Handle h, const Value& step) override {
      steps.push_back(std::to_string(h) + ":" + std::string(step["as"].as_str()));
    }
    void on_action(Handle h, std::string_view npc, std::string_view name, const Value& args) override {
      acts.push_back(std::to_string(h) + ":" + std::string(npc) + ":" + std::string(name) + ":" +
                     std::string(args["item"].as_str()) + (ends.count(h) ? " after done" : ""));
    }
  } events;
  npcai::Client client(events);
  REQUIRE(client.connect(fake.endpoint()));
  REQUIRE(poll_until(client, [&] { return client.state() == npcai::Client::State::Open; }));
  for (int i = 0; i < 7; ++i) client.ping();
  const Value actions = expected_values().at("message.request.npc.actions")["actions"];
  CHECK(client.npc_with_actions("brom", "You are Brom.", actions) == 8);
  npcai::Options act;
  act.extra = map_of({{"actions", true}});
  CHECK(client.say("brom", "A shield!", act) == 9);
  npcai::Options whole;
  whole.deadline_ms = 1500;
  Value steps = expected_values().at("message.request.chain")["steps"];
  CHECK(client.chain(steps, whole) == 10);
  npcai::Options wait;
  wait.deadline_ms = 500;
  wait.fallback = map_of({{"name", "wait"}, {"args", Value::map()}});
  CHECK(client.decide_action("brom", "20 gold.", {"give"}, wait) == 11);
  CHECK(client.act_result("brom", "give", "The customer has the shield.") == 12);
  REQUIRE(poll_until(client, [&] { return replies_sent && client.pending() == 0; }));
  {
    std::lock_guard<std::mutex> lock(fake.mutex);
    const char* names[] = {"message.request.npc.actions", "message.request.say.actions", "message.request.chain",
                           "message.request.decide.actions", "message.request.act_result"};
    REQUIRE(fake.received.size() == 5);
    for (int i = 0; i < 5; ++i) CHECK(fake.received[i] == vec(names[i]), std::string(names[i]) + ": " + hex(fake.received[i]));
  }
  CHECK(events.sentences == std::vector<std::string>({"9: Aye."}));
  CHECK(events.steps == std::vector<std::string>({"10:mood"}));
  CHECK(events.tokens[10] == " Aye" && events.tokens.count(4) == 0);
  // The decide with actions and the say's done.action act, each before its done; the chain's
  // decide step had no actions, so its step did not.
  CHECK(events.acts == std::vector<std::string>({"11:brom:give:shield", "9:brom:give:shield"}), std::to_string(events.acts.size()));
  CHECK(events.ends[10].reply["results"]["line"] == Value("Aye."));
  CHECK(client.stray() == 1);
}

CASE(client_unreadable_reply_ends_its_request) {
  // A reply that does not decode still ends the request its leading id names, with bad_reply;
  // what comes later for that id is stray, as is a reply whose id cannot be read. A str of
  // 2 MiB, within the limits every bridge shares (16 MiB), decodes.
  FakeSidecar fake;
  fake.run([&](FakeSidecar& f) {
    if (!f.accept() || !f.handshake()) return;
    Bytes frame;
    for (int i = 0; i < 3 && f.read_frame(frame); ++i) {
    }
    const Bytes head = {0x84, 0xa1, 'v', 0x01, 0xa2, 'i', 'd'};  // {v: 1, id: ...
    const Bytes done = {0xa5, 'e', 'v', 'e', 'n', 't', 0xa4, 'd', 'o', 'n', 'e', 0xa5, 'v', 'a', 'l', 'u', 'e'};
    Bytes not_utf8 = head;
    not_utf8.push_back(0x01);
    not_utf8.insert(not_utf8.end(), done.begin(), done.end());
    not_utf8.insert(not_utf8.end(), {0xa2, 0xff, 0xfe});
    f.send(not_utf8);
    f.send(encoded(map_of({{"v", 1}, {"id", 1}, {"event", "done"}, {"value", "late"}})));
    f.send(encoded(map_of({{"v", 1}, {"id", 2}, {"event", "done"}, {"value", std::string(2u << 20, 'x')}})));
    Bytes ext = head;
    ext.push_back(0x03);
    ext.insert(ext.end(), done.begin(), done.end());
    ext.insert(ext.end(), {0xd4, 0x01, 0x00});
    f.send(ext);
    f.send({0xc1});
    while (f.read_frame(frame)) {
    }
  });
  Recorder events;
  npcai::Client client(events);
  REQUIRE(client.connect(fake.endpoint()));
  REQUIRE(poll_until(client, [&] { return client.state() == npcai::Client::State::Open; }));
  const Handle bad_text = client.say("brom", "1");
  const Handle big = client.say("brom", "2");
  const Handle bad_type = client.say("brom", "3");
  REQUIRE(poll_until(client, [&] { return client.pending() == 0 && client.stray() == 2; }),
          std::to_string(client.pending()) + " open, " + std::to_string(client.stray()) + " stray");
  CHECK(events.ends[bad_text].kind == "error" && events.ends[bad_text].code == "bad_reply", events.ends[bad_text].code);
  CHECK(events.ends[bad_text].message.find("UTF-8") != std::string::npos, events.ends[bad_text].message);
  CHECK(events.ends[big].kind == "done" && events.ends[big].value.as_str().size() == (2u << 20));
  CHECK(events.ends[bad_type].code == "bad_reply", events.ends[bad_type].code);
  CHECK(events.order.size() == 3);  // the late done after bad_reply is not a second ending
  CHECK(client.state() == npcai::Client::State::Open);
  client.close();
}

CASE(client_not_connected_ends_at_next_poll) {
  Recorder events;
  npcai::Client client(events);
  const Handle h = client.say("brom", "Hi");
  CHECK(events.ends.empty());  // never from inside the call
  client.poll();
  CHECK(events.ends[h].kind == "error" && events.ends[h].code == "unavailable");
  CHECK(events.ends[h].message == "no connection to the sidecar is open", events.ends[h].message);
  CHECK(!client.cancel(h));
  CHECK(!client.connect("udp://1.2.3.4:5") && !client.error().empty());
  CHECK(!client.connect("tcp://127.0.0.1:99999"));
  CHECK(!client.connect("tcp://example.com:80"));  // names would need a blocking lookup
}

CASE(client_close_ends_open_requests) {
  FakeSidecar fake;
  fake.run([](FakeSidecar& f) {
    Bytes frame;
    if (f.accept() && f.handshake()) {
      while (f.read_frame(frame)) {
      }
    }
  });
  Recorder events;
  npcai::Client client(events);
  REQUIRE(client.connect(fake.endpoint()));
  REQUIRE(poll_until(client, [&] { return client.state() == npcai::Client::State::Open; }));
  const Handle h = client.say("brom", "Hi");
  client.close();
  CHECK(events.ends.empty() && client.state() == npcai::Client::State::Closed);
  client.poll();
  CHECK(events.ends[h].kind == "error" && events.ends[h].code == "unavailable");
  CHECK(events.ends[h].message == "the connection was closed", events.ends[h].message);
}

CASE(client_connect_refused) {
  int port = 0;
  {
    FakeSidecar gone;  // a port nobody listens on once this closes
    port = std::stoi(gone.endpoint().substr(gone.endpoint().rfind(':') + 1));
  }
  Recorder events;
  npcai::Client client(events);
  REQUIRE(client.connect("tcp://127.0.0.1:" + std::to_string(port)));
  REQUIRE(poll_until(client, [&] { return client.state() == npcai::Client::State::Closed; }));
  CHECK(client.error().find("refused") != std::string::npos, client.error());
}

CASE(client_rejects_a_peer_that_is_not_zmtp) {
  FakeSidecar fake;
  fake.run([](FakeSidecar& f) {
    if (f.accept()) f.write(Bytes(64, 'H'));
  });
  Recorder events;
  npcai::Client client(events);
  REQUIRE(client.connect(fake.endpoint()));
  REQUIRE(poll_until(client, [&] { return client.state() == npcai::Client::State::Closed; }));
  CHECK(client.error().find("ZMTP") != std::string::npos, client.error());
}

CASE(client_deadline_and_silence_without_replies) {
  // A sidecar that completes the handshake, then never answers (hung, or stopped).
  FakeSidecar fake;
  std::atomic<bool> done{false};
  fake.run([&](FakeSidecar& f) {
    if (!f.accept() || !f.handshake()) return;
    Bytes frame;
    while (!done && f.read_frame(frame)) f.record(frame);
  });
  Recorder events;
  npcai::ClientConfig config;
  config.heartbeat_ms = 100;
  config.silence_timeout_ms = 400;
  npcai::Client client(events, config);
  REQUIRE(client.connect(fake.endpoint()));
  REQUIRE(poll_until(client, [&] { return client.state() == npcai::Client::State::Open; }));

  npcai::Options options;
  options.deadline_ms = 150;
  options.fallback = Value("Hm.");
  const auto sent = Clock::now();
  const Handle timed = client.say("brom", "Hello?", options);
  const Handle plain = client.say("brom", "Anyone?");
  REQUIRE(poll_until(client, [&] { return events.ends.count(timed) == 1; }));
  const auto after = std::chrono::duration_cast<std::chrono::milliseconds>(events.ends[timed].at - sent).count();
  CHECK(after >= 150 && after < 300, std::to_string(after) + " ms");  // the first poll after it
  CHECK(events.ends[timed].kind == "done" && events.ends[timed].local && events.ends[timed].timed_out);
  CHECK(events.ends[timed].used_fallback && events.ends[timed].value == Value("Hm."));
  CHECK(events.ends[timed].finish_reason == "deadline");

  REQUIRE(poll_until(client, [&] { return events.ends.count(plain) == 1; }));
  const auto silent = std::chrono::duration_cast<std::chrono::milliseconds>(events.ends[plain].at - sent).count();
  CHECK(silent >= 400 && silent < 600, std::to_string(silent) + " ms");
  CHECK(events.ends[plain].code == "unavailable", events.ends[plain].code);
  CHECK(events.ends[plain].message.find("no answer") != std::string::npos, events.ends[plain].message);
  done = true;
  // Meanwhile the client sent heartbeat pings after 100 ms of silence (one at a time).
  std::lock_guard<std::mutex> lock(fake.mutex);
  int pings = 0;
  for (const Bytes& frame : fake.received) {
    Value v;
    if (decode(frame, v) == npcai::msgpack::Error::None && v["op"].as_str() == "ping") ++pings;
  }
  CHECK(pings == 1, std::to_string(pings) + " pings");
}

CASE(client_game_thread_stall_is_not_silence) {
  // A level load blocks the game thread (no poll(), so no heartbeat) longer than the silence
  // timeout. A live sidecar, which answers ping at once and the say 900 ms after it came, is
  // kept: the first poll after the stall pings it. A dead one is still found, a grace time later.
  FakeSidecar fake;
  std::atomic<bool> answer{true};
  fake.run([&](FakeSidecar& f) {
    if (!f.accept() || !f.handshake()) return;
    Bytes frame;
    Value req;
    if (!f.read_frame(frame)) return;
    const auto said = Clock::now();
    bool done = false;
    while (f.read_frame(frame) && decode(frame, req) == npcai::msgpack::Error::None) {
      f.record(frame);
      if (!answer) continue;
      f.send(encoded(map_of({{"v", 1}, {"id", req["id"].as_int()}, {"event", "ok"}})));
      if (!done && Clock::now() - said >= std::chrono::milliseconds(900)) {
        f.send(encoded(map_of({{"v", 1}, {"id", 1}, {"event", "done"}, {"value", "Aye."}})));
        done = true;
      }
    }
  });
  Recorder events;
  npcai::ClientConfig config;
  config.heartbeat_ms = 100;
  config.silence_timeout_ms = 400;
  npcai::Client client(events, config);
  REQUIRE(client.connect(fake.endpoint()));
  REQUIRE(poll_until(client, [&] { return client.state() == npcai::Client::State::Open; }));

  const Handle said = client.say("brom", "Hello?");
  std::this_thread::sleep_for(std::chrono::milliseconds(600));
  REQUIRE(poll_until(client, [&] { return events.ends.count(said) == 1; }));
  CHECK(events.ends[said].kind == "done" && events.ends[said].value == Value("Aye."),
        events.ends[said].kind + " " + events.ends[said].message);
  CHECK(client.state() == npcai::Client::State::Open);

  answer = false;  // now it hangs
  const Handle lost = client.say("brom", "Still there?");
  std::this_thread::sleep_for(std::chrono::milliseconds(600));
  const auto resumed = Clock::now();
  REQUIRE(poll_until(client, [&] { return events.ends.count(lost) == 1; }));
  const auto grace = std::chrono::duration_cast<std::chrono::milliseconds>(events.ends[lost].at - resumed).count();
  CHECK(events.ends[lost].code == "unavailable", events.ends[lost].code);
  CHECK(grace >= 300 && grace < 500, std::to_string(grace) + " ms after the stall");  // a ping's grace
  client.close();
}

CASE(client_budget_and_frame_reports) {
  // set_budget's wire bytes; report_frame() buffers frames and poll() sends one `frame` request
  // (an array of float64) per frame_report_every (6) frames, at most one unanswered at a time.
  FakeSidecar fake;
  std::atomic<bool> release{false};
  fake.run([&](FakeSidecar& f) {
    if (!f.accept() || !f.handshake()) return;
    Bytes frame;
    if (!f.read_frame(frame)) return;
    f.record(frame);
    f.send(encoded(map_of({{"v", 1}, {"id", 1}, {"event", "ok"}, {"budget", map_of({{"threads", 1}})},
                           {"effective", map_of({{"threads", 1}, {"batch", 512}, {"share", 1.0}})}})));
    for (int level = 1; level <= 2 && f.read_frame(frame); ++level) {
      f.record(frame);
      while (level == 1 && !release) std::this_thread::sleep_for(std::chrono::milliseconds(1));
      Value req;
      if (decode(frame, req) != npcai::msgpack::Error::None) return;
      f.send(encoded(map_of({{"v", 1}, {"id", req["id"].as_int()}, {"event", "ok"}, {"backoff_level", level}})));
    }
    while (f.read_frame(frame)) f.record(frame);
  });
  Recorder events;
  npcai::Client client(events);
  REQUIRE(client.connect(fake.endpoint()));
  REQUIRE(poll_until(client, [&] { return client.state() == npcai::Client::State::Open; }));

  npcai::Budget budget;
  budget.threads = 1;
  budget.frame_ms = 16.7;
  const Handle h = client.set_budget(budget);
  CHECK(h == 1);
  REQUIRE(poll_until(client, [&] { return events.ends.count(h) == 1; }));
  CHECK(events.ends[h].kind == "done" && events.ends[h].reply["effective"]["threads"].as_int() == 1);
  CHECK(fake.received_count() == 1);

  const double first[] = {16.0, 16.5, 17.25, 33.5, 40.0, 8.125};
  for (int i = 0; i < 5; ++i) {
    client.report_frame(first[i]);
    client.poll();
  }
  client.report_frame(std::nan(""));  // ignored, as are negative times
  client.report_frame(-1.0);
  poll_until(client, [] { return false; }, 50);
  CHECK(fake.received_count() == 1, "a frame report before 6 frames");
  client.report_frame(first[5]);
  CHECK(fake.received_count() == 1);  // never from report_frame itself
  REQUIRE(poll_until(client, [&] { return fake.received_count() == 2; }));

  // Ten more frames while the first report is unanswered: they wait for its reply.
  for (int i = 0; i < 10; ++i) {
    client.report_frame(20.0 + i);
    client.poll();
  }
  poll_until(client, [] { return false; }, 50);
  CHECK(fake.received_count() == 2, "a second report while the first was unanswered");
  CHECK(client.backoff_level() == 0);
  release = true;
  REQUIRE(poll_until(client, [&] { return client.backoff_level() == 2; }));
  CHECK(client.pending() == 0 && events.ends.size() == 1);  // reports are the client's own: no events
  client.close();

  std::lock_guard<std::mutex> lock(fake.mutex);
  REQUIRE(fake.received.size() == 3);
  const Bytes budget_bytes = {0x85, 0xa1, 'v', 0x01, 0xa2, 'i', 'd', 0x01, 0xa2, 'o', 'p', 0xa6, 'b', 'u', 'd', 'g',
                              'e', 't', 0xa7, 't', 'h', 'r', 'e', 'a', 'd', 's', 0x01, 0xa8, 'f', 'r', 'a', 'm', 'e',
                              '_', 'm', 's', 0xcb, 0x40, 0x30, 0xb3, 0x33, 0x33, 0x33, 0x33, 0x33};
  CHECK(fake.received[0] == budget_bytes, hex(fake.received[0]));
  CHECK(fake.received[0] ==
        encoded(map_of({{"v", 1}, {"id", 1}, {"op", "budget"}, {"threads", 1}, {"frame_ms", 16.7}})));
  // The first report, byte for byte: {v: 1, id: 2, op: "frame", frame_ms: [six float64]}.
  Bytes frame_bytes = {0x84, 0xa1, 'v', 0x01, 0xa2, 'i', 'd', 0x02, 0xa2, 'o', 'p', 0xa5, 'f', 'r', 'a', 'm', 'e',
                       0xa8, 'f', 'r', 'a', 'm', 'e', '_', 'm', 's', 0x96};
  for (const Bytes& f64 : {Bytes{0xcb, 0x40, 0x30, 0, 0, 0, 0, 0, 0}, Bytes{0xcb, 0x40, 0x30, 0x80, 0, 0, 0, 0, 0},
                           Bytes{0xcb, 0x40, 0x31, 0x40, 0, 0, 0, 0, 0}, Bytes{0xcb, 0x40, 0x40, 0xc0, 0, 0, 0, 0, 0},
                           Bytes{0xcb, 0x40, 0x44, 0, 0, 0, 0, 0, 0}, Bytes{0xcb, 0x40, 0x20, 0x40, 0, 0, 0, 0, 0}}) {
    frame_bytes.insert(frame_bytes.end(), f64.begin(), f64.end());
  }
  CHECK(fake.received[1] == frame_bytes, hex(fake.received[1]));
  Value six = Value::array();
  for (double f : first) six.push(f);
  CHECK(fake.received[1] == encoded(map_of({{"v", 1}, {"id", 2}, {"op", "frame"}, {"frame_ms", six}})));
  // The second carries all ten frames that gathered meanwhile.
  Value ten = Value::array();
  for (int i = 0; i < 10; ++i) ten.push(20.0 + i);
  CHECK(fake.received[2] == encoded(map_of({{"v", 1}, {"id", 3}, {"op", "frame"}, {"frame_ms", ten}})),
        hex(fake.received[2]));
}

// --- the launcher's failure paths (the real sidecar is in e2e_tests) ---------------------------

namespace {

template <class Done>
bool poll_launcher(npcai::Launcher& launcher, Done done, int timeout_ms = 5000) {
  const auto until = Clock::now() + std::chrono::milliseconds(timeout_ms);
  while (!done()) {
    if (Clock::now() > until) return false;
    launcher.poll();
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return true;
}

}  // namespace

CASE(launcher_command_missing) {
  Recorder events;
  npcai::LauncherConfig config;
  config.command = {"/nonexistent/npcai"};
  npcai::Launcher launcher(events, config);
  CHECK(!launcher.launch());
  CHECK(launcher.state() == npcai::Launcher::State::Failed);
  CHECK(launcher.error().find("cannot start") != std::string::npos, launcher.error());
}

CASE(launcher_child_exits_before_ready) {
  Recorder events;
  npcai::LauncherConfig config;
  config.command = {"sh", "-c", "echo 'npcai: no model' >&2; exit 2", "sh"};
  config.log_file = "launcher_exit_test.log";
  npcai::Launcher launcher(events, config);
  REQUIRE(launcher.launch());
  REQUIRE(poll_launcher(launcher, [&] { return launcher.state() == npcai::Launcher::State::Failed; }));
  CHECK(launcher.error().find("exited with code 2 before it was ready") != std::string::npos, launcher.error());
  std::ifstream log(config.log_file);
  std::string line;
  std::getline(log, line);
  CHECK(line == "npcai: no model", line);
  std::remove(config.log_file.c_str());
}

CASE(launcher_ready_timeout_kills_child) {
  Recorder events;
  npcai::LauncherConfig config;
  config.command = {"sh", "-c", "echo starting; exec sleep 30", "sh"};
  config.ready_timeout_ms = 200;
  npcai::Launcher launcher(events, config);
  REQUIRE(launcher.launch());
  const long long pid = launcher.sidecar_pid();
  const auto start = Clock::now();
  REQUIRE(poll_launcher(launcher, [&] { return launcher.state() == npcai::Launcher::State::Failed; }));
  CHECK(Clock::now() - start < std::chrono::seconds(2));
  CHECK(launcher.error().find("not ready within 200 ms") != std::string::npos, launcher.error());
  CHECK(launcher.sidecar_pid() == 0 && ::kill(static_cast<pid_t>(pid), 0) != 0);  // killed and reaped
}

CASE(launcher_reads_ready_line_and_stops) {
  // A stand-in child prints noise then the READY line of a fake sidecar, which answers hello.
  FakeSidecar fake;
  std::atomic<bool> got_shutdown{false};
  fake.run([&](FakeSidecar& f) {
    if (!f.accept() || !f.handshake()) return;
    Bytes frame;
    while (f.read_frame(frame)) {
      Value req;
      if (decode(frame, req) != npcai::msgpack::Error::None) break;
      if (req["op"].as_str() == "shutdown") got_shutdown = true;
      f.send(encoded(map_of({{"v", 1}, {"id", req["id"].as_int()}, {"event", "ok"}, {"protocol", 1}})));
    }
  });
  Recorder events;
  npcai::LauncherConfig config;
  config.command = {"sh", "-c", "echo loading; echo 'NPCAI READY " + fake.endpoint() + "'; exec sleep 30", "sh"};
  config.stop_timeout_ms = 600;
  npcai::Launcher launcher(events, config);
  REQUIRE(launcher.launch());
  REQUIRE(poll_launcher(launcher, [&] { return launcher.ready() || launcher.state() == npcai::Launcher::State::Failed; }),
          npcai::to_string(launcher.state()));
  REQUIRE(launcher.ready(), launcher.error());
  CHECK(launcher.endpoint() == fake.endpoint());
  CHECK(launcher.hello_reply()["protocol"].as_int() == 1);
  CHECK(events.ends.empty());  // hello is the launcher's own

  const long long pid = launcher.sidecar_pid();
  const auto start = Clock::now();
  launcher.stop();  // `sleep` ignores shutdown: terminated after half the timeout
  const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start).count();
  CHECK(took >= 300 && took < 700, std::to_string(took) + " ms");
  CHECK(::kill(static_cast<pid_t>(pid), 0) != 0);
  CHECK(launcher.state() == npcai::Launcher::State::Idle);
  launcher.poll();
  CHECK(events.ends.empty());  // the shutdown request is the launcher's own too
  for (int i = 0; i < 100 && !got_shutdown; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  CHECK(got_shutdown);
}

CASE(launcher_starts_a_program_whose_path_has_spaces) {
  // A Python under "C:\Program Files" must be nameable: the program and each argument are passed
  // whole. The stand-in program lives in a folder with a space and prints its first argument,
  // which holds spaces too, as its READY line.
  FakeSidecar fake;
  fake.run([](FakeSidecar& f) {
    if (!f.accept() || !f.handshake()) return;
    Bytes frame;
    while (f.read_frame(frame)) {
      Value req;
      if (decode(frame, req) != npcai::msgpack::Error::None) break;
      f.send(encoded(map_of({{"v", 1}, {"id", req["id"].as_int()}, {"event", "ok"}, {"protocol", 1}})));
    }
  });
  const std::string folder = "launcher test folder";
  const std::string program = folder + "/fake sidecar";
  ::mkdir(folder.c_str(), 0755);
  {
    std::ofstream script(program);
    script << "#!/bin/sh\necho \"$1\"\nexec sleep 30\n";
  }
  REQUIRE(::chmod(program.c_str(), 0755) == 0);
  Recorder events;
  npcai::LauncherConfig config;
  config.command = {"./" + program, "NPCAI READY " + fake.endpoint()};
  config.stop_timeout_ms = 200;
  npcai::Launcher launcher(events, config);
  REQUIRE(launcher.launch(), launcher.error());
  REQUIRE(poll_launcher(launcher, [&] { return launcher.ready() || launcher.state() == npcai::Launcher::State::Failed; }),
          npcai::to_string(launcher.state()));
  CHECK(launcher.ready() && launcher.endpoint() == fake.endpoint(), launcher.error());
  launcher.stop();
  std::remove(program.c_str());
  ::rmdir(folder.c_str());
}

CASE(launcher_finds_the_bundle_in_its_folders_then_on_path) {
  // find_sidecar_bundle: each folder in order, then PATH; a file without execute permission and a
  // folder named npcai-sidecar are passed over.
  const std::string root = "bundle search test";
  const std::string first = root + "/game", second = root + "/game/npcai", on_path = root + "/bin";
  for (const std::string& d : {root, first, second, on_path}) ::mkdir(d.c_str(), 0755);
  const auto put = [](const std::string& path, mode_t mode) {
    std::ofstream(path) << "#!/bin/sh\nexit 0\n";
    return ::chmod(path.c_str(), mode) == 0;
  };
  const std::string name = npcai::kSidecarExecutable;
  const char* old_path = std::getenv("PATH");
  const std::string saved = old_path ? old_path : "";
  char cwd[4096];
  REQUIRE(::getcwd(cwd, sizeof cwd) != nullptr);
  const std::string abs_path_dir = std::string(cwd) + "/" + on_path;
  ::setenv("PATH", (abs_path_dir + ":" + saved).c_str(), 1);
  const std::vector<std::string> dirs{first, second};
  CHECK(npcai::find_sidecar_bundle(dirs, false).empty(), "found something in empty folders");
  REQUIRE(put(on_path + "/" + name, 0755));
  CHECK(npcai::find_sidecar_bundle(dirs) == abs_path_dir + "/" + name, npcai::find_sidecar_bundle(dirs));
  CHECK(npcai::find_sidecar_bundle(dirs, false).empty(), "searched PATH when told not to");
  REQUIRE(put(second + "/" + name, 0644));  // not executable: passed over
  CHECK(npcai::find_sidecar_bundle(dirs) == abs_path_dir + "/" + name, npcai::find_sidecar_bundle(dirs));
  REQUIRE(::chmod((second + "/" + name).c_str(), 0755) == 0);
  CHECK(npcai::find_sidecar_bundle(dirs) == second + "/" + name, npcai::find_sidecar_bundle(dirs));
  CHECK(npcai::find_sidecar_bundle({first + "/", second}) == second + "/" + name);
  ::mkdir((first + "/" + name).c_str(), 0755);  // a folder of that name: passed over
  CHECK(npcai::find_sidecar_bundle(dirs) == second + "/" + name, npcai::find_sidecar_bundle(dirs));
  REQUIRE(put(root + "/" + name, 0755));
  CHECK(npcai::find_sidecar_bundle({root, second}) == root + "/" + name, "the first folder wins");
  ::setenv("PATH", saved.c_str(), 1);
  for (const std::string& f : {on_path + "/" + name, second + "/" + name, root + "/" + name}) std::remove(f.c_str());
  for (const std::string& d : {first + "/" + name, second, first, on_path, root}) ::rmdir(d.c_str());
}

CASE(windows_command_line_keeps_each_argument_whole) {
  // What CreateProcess gets on Windows: the MSVC runtime splits this string back into the same argv.
  std::string line = npcai::windows_command_line({R"(C:\Program Files\Python311\python.exe)", "-m", "npcai", "serve"});
  CHECK(line == R"("C:\Program Files\Python311\python.exe" -m npcai serve)", line);
  line = npcai::windows_command_line({"a b", "", R"(say "hi")", R"(C:\dir with space\)", R"(C:\no\space)", "tab\tthere"});
  CHECK(line == R"("a b" "" "say \"hi\"" "C:\dir with space\\" C:\no\space )" "\"tab\tthere\"", line);
}

int main(int argc, char** argv) {
  int first = 1;
  if (argc > 2 && std::string(argv[1]) == "--vectors") {
    g_vectors_path = argv[2];
    first = 3;
  }
  return check::run_all(argc, argv, first);
}
