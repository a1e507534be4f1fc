// Chat-template renderer tests: the expression language and statements against hand-checked
// expectations, error cases, runaway-template budgets, concurrent rendering, mutation fuzzing
// of the real templates, and — the main check — byte-identical output against Jinja2 itself
// (tests/chat_template_ref.py, configured like Hugging Face transformers) for every template in
// ../shared/templates and a set of conversations.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include "chat/chat_template.h"
#include "test_util.h"

namespace {

using json = nlohmann::ordered_json;

// 2024-07-26 12:00:00, a Friday — the date tests/chat_template_ref.py uses for strftime_now().
std::tm fixed_now() {
    std::tm t{};
    t.tm_year = 124;
    t.tm_mon = 6;
    t.tm_mday = 26;
    t.tm_hour = 12;
    t.tm_wday = 5;
    t.tm_yday = 207;
    return t;
}

kvs::chat_render_options test_options() {
    kvs::chat_render_options o;
    o.now = fixed_now();
    return o;
}

kvs::result<std::string> render(const std::string& src, const json& ctx = json::object()) {
    auto t = kvs::chat_template::parse(src);
    if (!t.is_ok()) return t.error();
    return t->render(ctx, test_options());
}

std::string render_ok(const std::string& src, const json& ctx = json::object()) {
    auto r = render(src, ctx);
    EXPECT_TRUE(r.is_ok()) << "template: " << src << "\nerror: " << r.message();
    return r.is_ok() ? r.value() : std::string("<error>");
}

std::string render_err(const std::string& src, const json& ctx = json::object()) {
    auto r = render(src, ctx);
    EXPECT_FALSE(r.is_ok()) << "template: " << src << "\nunexpectedly rendered: " << (r.is_ok() ? r.value() : "");
    return r.message();
}

std::string read_file(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

const char* const template_files[] = {
    "CohereForAI-c4ai-command-r-plus-tool_use.jinja",
    "CohereForAI-c4ai-command-r7b-12-2024-tool_use.jinja",
    "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use.jinja",
    "NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja",
    "Qwen-Qwen2.5-7B-Instruct.jinja",
    "deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja",
    "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja",
    "fireworks-ai-llama-3-firefunction-v2.jinja",
    "google-gemma-2-2b-it.jinja",
    "llama-cpp-deepseek-r1.jinja",
    "meetkai-functionary-medium-v3.1.jinja",
    "meetkai-functionary-medium-v3.2.jinja",
    "meta-llama-Llama-3.1-8B-Instruct.jinja",
    "meta-llama-Llama-3.2-3B-Instruct.jinja",
    "meta-llama-Llama-3.3-70B-Instruct.jinja",
    "microsoft-Phi-3.5-mini-instruct.jinja",
    "mistralai-Mistral-Nemo-Instruct-2407.jinja",
};

// Common simple templates, as published for these model families.
const std::pair<const char*, const char*> inline_templates[] = {
    {"llama2",
     "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = "
     "messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif "
     "%}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ "
     "raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if "
     "loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + "
     "'\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if "
     "message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] "
     "== 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"},
    {"chatml",
     "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + "
     "'\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"},
    {"zephyr",
     "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + "
     "eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n{% "
     "elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif "
     "%}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"},
    {"vicuna",
     "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] | trim + '\\n\\n' }}{% set messages = "
     "messages[1:] %}{% else %}{{ 'A chat between a curious user and an artificial intelligence assistant.\\n\\n' "
     "}}{% endif %}\n{%- for message in messages %}\n    {%- if message['role'] == 'user' %}\n        {{- 'USER: ' + "
     "message['content'] | trim + '\\n' }}\n    {%- elif message['role'] == 'assistant' %}\n        {{- 'ASSISTANT: "
     "' + message['content'] | trim + eos_token + '\\n' }}\n    {%- endif %}\n{%- endfor %}\n{%- if "
     "add_generation_prompt %}\n    {{- 'ASSISTANT:' }}\n{%- endif %}\n"},
    {"whitespace-control",
     "<s>\n  {%- for m in messages %}\n    {% if m.role == 'user' %}\n  U: {{ m.content }}\n    {%- else %}\n   A: "
     "{{- m.content -}}   \n    {% endif %}\n  {#- a comment -#}\n  {%+ if loop.last %}[last]{% endif +%}\n{% endfor "
     "%}\n{% raw %}{{ not parsed }}{% endraw %}\n   {# trimmed comment #}\nend\n"},
};

// ---- conversations ------------------------------------------------------------------------

json tool_defs() {
    return json::parse(R"([
      {"type": "function", "function": {"name": "get_weather", "description": "Get the current weather for a city.",
        "parameters": {"type": "object", "properties": {
          "location": {"type": "string", "description": "City name, e.g. Paris"},
          "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "description": "Temperature unit",
                   "default": "celsius"}},
          "required": ["location"]}}},
      {"type": "function", "function": {"name": "search_docs", "description": "Search the documentation",
        "parameters": {"type": "object", "properties": {
          "query": {"type": "string", "description": "What to look for"},
          "limit": {"type": "integer", "description": "Max results", "minimum": 1, "maximum": 50,
                    "examples": [5, 10]},
          "tags": {"type": "array", "items": {"type": "string"}, "description": "Tags to match"},
          "filters": {"type": "object", "properties": {"after": {"type": "string", "format": "date",
                      "description": "Only after this date"}}, "required": ["after"], "description": "Filters"},
          "mode": {"type": ["string", "null"], "description": "Search mode"},
          "score": {"type": "number", "nullable": true, "description": "Minimum score 0.5"}},
          "required": ["query"]}}}
    ])");
}

// Tools every template handles (the set above trips Command R+ and Hermes — in Jinja2 too:
// an object without additionalProperties, and a `type` list that recurses forever).
json simple_tool_defs() {
    return json::parse(R"([
      {"type": "function", "function": {"name": "get_weather", "description": "Get the current weather for a city.",
        "parameters": {"type": "object", "properties": {
          "location": {"type": "string", "description": "City name, e.g. Paris"},
          "days": {"type": "integer", "description": "Forecast days"},
          "units": {"type": "array", "items": {"type": "string"}, "description": "Units to report"},
          "extra": {"type": "object", "additionalProperties": {"type": "number"}, "description": "Extra values"}},
          "required": ["location"]}}}
    ])");
}

json tool_conversation(bool dict_arguments, bool null_content) {
    json args = json::parse(R"({"location": "Paris", "unit": "celsius"})");
    json call = {{"id", "call12345"},
                 {"type", "function"},
                 {"function", {{"name", "get_weather"}, {"arguments", dict_arguments ? args : json(args.dump())}}}};
    json assistant = {{"role", "assistant"}, {"content", null_content ? json(nullptr) : json("")},
                      {"tool_calls", json::array({call})}};
    return json::array({
        {{"role", "system"}, {"content", "You are a weather bot."}},
        {{"role", "user"}, {"content", "What's the weather in Paris?"}},
        assistant,
        {{"role", "tool"}, {"tool_call_id", "call12345"}, {"name", "get_weather"},
         {"content", "{\"temperature\": 22, \"sky\": \"clear\"}"}},
        {{"role", "assistant"}, {"content", "It is 22\xC2\xB0" "C and clear in Paris."}},
        {{"role", "user"}, {"content", "Thanks!"}},
    });
}

// Two calls in one assistant turn, answered by two consecutive tool messages.
json parallel_tool_conversation() {
    return json::parse(R"([
      {"role": "user", "content": "Weather in Paris and Oslo?"},
      {"role": "assistant", "content": null, "tool_calls": [
        {"id": "callAAAAA", "type": "function", "function": {"name": "get_weather", "arguments": {"location": "Paris"}}},
        {"id": "callBBBBB", "type": "function", "function": {"name": "get_weather", "arguments": {"location": "Oslo"}}}]},
      {"role": "tool", "tool_call_id": "callAAAAA", "name": "get_weather", "content": "22 C"},
      {"role": "tool", "tool_call_id": "callBBBBB", "name": "get_weather", "content": "9 C"},
      {"role": "assistant", "content": "Paris: 22 C, Oslo: 9 C."}
    ])");
}

struct context_case {
    std::string name;
    json messages;
    json tools;  // null: none
    json extra;  // merged into the context
};

std::vector<context_case> conversations() {
    const json sys = {{"role", "system"}, {"content", "You are a helpful assistant."}};
    const json u1 = {{"role", "user"}, {"content", "Hello!"}};
    const json a1 = {{"role", "assistant"}, {"content", "Hi! How can I help you today?"}};
    const json u2 = {{"role", "user"}, {"content", "Tell me a joke about cats."}};
    const json extra = {{"functions", "[{\"name\": \"get_weather\"}]"}, {"datetime", "2024-07-26"}};
    std::vector<context_case> c;
    c.push_back({"system+user", json::array({sys, u1}), nullptr, extra});
    c.push_back({"user", json::array({u1}), nullptr, extra});
    c.push_back({"multi-turn", json::array({sys, u1, a1, u2}), nullptr, extra});
    c.push_back({"multi-turn-no-system", json::array({u1, a1, u2}), nullptr, extra});
    c.push_back({"ends-with-assistant", json::array({u1, a1}), nullptr, extra});
    c.push_back({"unicode-whitespace",
                 json::array({{{"role", "system"}, {"content", "  R\xC3\xA9ponds en fran\xC3\xA7" "ais. \xF0\x9F\xA4\x96\n"}},
                              {{"role", "user"},
                               {"content", "\t  Gr\xC3\xBC\xC3\x9F" "e, \xE4\xB8\x96\xE7\x95\x8C! \xC2\xABq\xC2\xBB 'single' "
                                           "\"double\" \\ back <tag> & amp\xE3\x80\x80\n\n"}}}),
                 nullptr, extra});
    c.push_back({"reasoning", json::array({u1, {{"role", "assistant"}, {"content", "<think>Greet back.</think>Hello there!"}}, u2}),
                 nullptr, extra});
    c.push_back({"empty-messages", json::array(), nullptr, extra});
    c.push_back({"tools-no-calls", json::array({sys, u1}), tool_defs(), extra});
    c.push_back({"tools-dict-args", tool_conversation(true, true), tool_defs(), extra});
    c.push_back({"tools-string-args", tool_conversation(false, false), tool_defs(), extra});
    c.push_back({"simple-tools-no-calls", json::array({sys, u1}), simple_tool_defs(), extra});
    c.push_back({"simple-tools-dict-args", tool_conversation(true, true), simple_tool_defs(), extra});
    c.push_back({"simple-tools-string-args", tool_conversation(false, false), simple_tool_defs(), extra});
    c.push_back({"simple-tools-parallel", parallel_tool_conversation(), simple_tool_defs(), extra});
    json ctx_extra = extra;
    ctx_extra["builtin_tools"] = json::array({"brave_search", "wolfram_alpha", "code_interpreter"});
    ctx_extra["tools_in_user_message"] = false;
    ctx_extra["date_string"] = "01 Jan 2025";
    c.push_back({"tools-builtin-system", tool_conversation(true, true), tool_defs(), ctx_extra});
    json code_tools = tool_defs();
    code_tools.push_back({{"type", "code_interpreter"}});
    c.push_back({"tools-code-interpreter", json::array({sys, u1}), code_tools, extra});
    json docs_extra = extra;
    docs_extra["documents"] = json::array({{{"title", "Tall penguins"}, {"text", "Emperor penguins are the tallest."}},
                                           {{"title", "Penguin habitats"}, {"text", "Emperor penguins only live in Antarctica."}}});
    docs_extra["enable_citations"] = true;
    c.push_back({"documents", json::array({u1}), tool_defs(), docs_extra});
    return c;
}

json make_context(const context_case& c, bool add_generation_prompt) {
    json ctx = json::object();
    ctx["messages"] = c.messages;
    ctx["tools"] = c.tools;
    ctx["documents"] = nullptr;
    ctx["add_generation_prompt"] = add_generation_prompt;
    ctx["bos_token"] = "<s>";
    ctx["eos_token"] = "</s>";
    for (auto it = c.extra.begin(); it != c.extra.end(); ++it) ctx[it.key()] = it.value();
    return ctx;
}

// ---- the Jinja2 reference ------------------------------------------------------------------

std::string ref_script() { return std::string(KVSERVE_SOURCE_DIR) + "/tests/chat_template_ref.py"; }

bool reference_available(std::string* why) {
    std::string out;
    if (kvs::test::run_command("test -x /usr/bin/python3", &out) != 0) {
        *why = "/usr/bin/python3 not found";
        return false;
    }
    if (kvs::test::run_command("/usr/bin/python3 -c 'import jinja2'", &out) != 0) {
        *why = "python module jinja2 missing (Debian: python3-jinja2): " + out;
        return false;
    }
    return true;
}

struct ref_result {
    bool ok = false;
    std::string text;  // output or error
};

// Renders every (template, context) pair with Jinja2 in one Python process.
std::vector<ref_result> reference_render(const std::vector<std::pair<std::string, json>>& cases) {
    json batch = json::array();
    for (const auto& [src, ctx] : cases) batch.push_back({{"template", src}, {"context", ctx}});
    const std::string dir = kvs::test::temp_dir();
    static int counter = 0;
    const std::string in = dir + "/chat_cases_" + std::to_string(counter) + ".json";
    const std::string outp = dir + "/chat_results_" + std::to_string(counter++) + ".json";
    {
        std::ofstream f(in, std::ios::binary);
        f << batch.dump();
    }
    std::string log;
    const int rc = kvs::test::run_command("/usr/bin/python3 '" + ref_script() + "' --batch '" + in + "' '" + outp + "'", &log);
    EXPECT_EQ(rc, 0) << log;
    std::vector<ref_result> results;
    if (rc != 0) return results;
    const json r = json::parse(read_file(outp));
    for (const auto& e : r) {
        ref_result x;
        x.ok = e["ok"].get<bool>();
        x.text = x.ok ? e["output"].get<std::string>() : e["error"].get<std::string>();
        results.push_back(std::move(x));
    }
    return results;
}

std::string escape_for_log(const std::string& s) {
    std::string out;
    for (char c : s) {
        if (c == '\n') out += "\\n";
        else if (c == '\t') out += "\\t";
        else out += c;
    }
    return out;
}

// Where two renders first differ, with a little context.
std::string first_difference(const std::string& a, const std::string& b) {
    size_t i = 0;
    while (i < a.size() && i < b.size() && a[i] == b[i]) ++i;
    const size_t from = i > 40 ? i - 40 : 0;
    return "first difference at byte " + std::to_string(i) + "\n  jinja2: ..." +
           escape_for_log(a.substr(from, 120)) + "\n  kvs:    ..." + escape_for_log(b.substr(from, 120));
}

}  // namespace

// ============================================================================================
// Expression language and statements (hand-checked expectations; no Python needed)
// ============================================================================================

TEST(chat_template, literals_and_printing) {
    EXPECT_EQ(render_ok("{{ 'a\\tb\\n' }}|{{ \"q'\" }}|{{ 'x' 'y' }}"), "a\tb\n|q'|xy");
    EXPECT_EQ(render_ok("{{ 1 }} {{ -2 }} {{ 1.5 }} {{ 3.0 }} {{ 1e16 }} {{ 0.00001 }} {{ 1_000 }}"),
              "1 -2 1.5 3.0 1e+16 1e-05 1000");
    EXPECT_EQ(render_ok("{{ true }} {{ False }} {{ none }} {{ None }} [{{ undefined_name }}]"), "True False None None []");
    EXPECT_EQ(render_ok("{{ [1, 'a', none, true, 1.5, {'k': (1,)}, ()] }}"), "[1, 'a', None, True, 1.5, {'k': (1,)}, ()]");
    EXPECT_EQ(render_ok("{{ [\"it's\", 'say \"hi\"', 'both \\' \"'] }}"), "[\"it's\", 'say \"hi\"', 'both \\' \"']");
    EXPECT_EQ(render_ok("{{ '\\u00e9\\x41\\101' }}"), "\xC3\xA9" "AA");
}

TEST(chat_template, operators) {
    EXPECT_EQ(render_ok("{{ 7 // 2 }} {{ -7 // 2 }} {{ -7 % 3 }} {{ 7 % -3 }} {{ 2 ** 10 }} {{ 1 / 2 }} {{ 2 * 3.0 }}"),
              "3 -4 2 -2 1024 0.5 6.0");
    EXPECT_EQ(render_ok("{{ 'ab' * 3 }}|{{ [1] * 2 }}|{{ [1] + [2] }}|{{ 'a' ~ 1 ~ none ~ undefined_name }}"),
              "ababab|[1, 1]|[1, 2]|a1None");
    EXPECT_EQ(render_ok("{{ 1 == 1.0 }} {{ true == 1 }} {{ 'a' < 'b' }} {{ [1, 2] < [1, 3] }} {{ 1 < 2 < 3 }} {{ 3 > 2 > 2 }}"),
              "True True True True True False");
    EXPECT_EQ(render_ok("{{ 'b' in 'abc' }} {{ 2 in [1, 2] }} {{ 'k' in {'k': 1} }} {{ 'z' not in 'abc' }}"),
              "True True True True");
    EXPECT_EQ(render_ok("{{ 0 or 'x' }} {{ 1 and 'y' }} {{ not 0 }} {{ none or [] }} {{ 'a' if 0 else 'b' }}"),
              "x y True [] b");
    EXPECT_EQ(render_ok("{{ -3|abs }} {{ (1 + 2) * 3 }} {{ 2 + 3 * 4 ** 2 }} {{ 10 - 2 - 3 }}"), "3 9 50 5");
}

TEST(chat_template, subscripts_and_slices) {
    const json ctx = {{"xs", {1, 2, 3, 4}}, {"s", "h\xC3\xA9llo"}, {"d", {{"a", 1}, {"items", 2}}}};
    EXPECT_EQ(render_ok("{{ xs[0] }} {{ xs[-1] }} {{ xs[1:] }} {{ xs[:-1] }} {{ xs[::-1] }} {{ xs[::2] }} [{{ xs[9] }}]", ctx),
              "1 4 [2, 3, 4] [1, 2, 3] [4, 3, 2, 1] [1, 3] []");
    EXPECT_EQ(render_ok("{{ s[1] }} {{ s[1:3] }} {{ s[::-1] }} {{ s|length }}", ctx),
              "\xC3\xA9 \xC3\xA9l oll\xC3\xA9h 5");
    EXPECT_EQ(render_ok("{{ d.a }} {{ d['a'] }} {{ d['items'] }} {{ d.get('zz', 7) }} {{ d.zz is defined }}", ctx),
              "1 1 2 7 False");
    EXPECT_EQ(render_ok("{{ none.x is defined }} {{ xs.0 }} [{{ d[] }}{{ xs[1, 2] }}]", ctx), "False 1 []");
}

TEST(chat_template, filters) {
    const json ctx = {{"msgs", json::parse(R"([{"role": "user", "n": 2}, {"role": "tool", "n": 1}, {"role": "user"}])")}};
    EXPECT_EQ(render_ok("{{ '  x  '|trim }}|{{ 'aXb'|upper }}|{{ 'aXb'|lower }}|{{ 'hello world'|capitalize }}|"
                        "{{ 'hello big-world'|title }}"),
              "x|AXB|axb|Hello world|Hello Big-World");
    EXPECT_EQ(render_ok("{{ [3, 1, 2]|sort }} {{ [3, 1, 2]|sort(reverse=true) }} {{ ['b', 'A', 'c']|sort }} "
                        "{{ [1, 2]|first }} {{ [1, 2]|last }} {{ [1, 2]|length }} {{ 'abc'|list }}"),
              "[1, 2, 3] [3, 2, 1] ['A', 'b', 'c'] 1 2 2 ['a', 'b', 'c']");
    EXPECT_EQ(render_ok("{{ msgs|selectattr('role', 'equalto', 'user')|list|length }} "
                        "{{ msgs|rejectattr('role', 'equalto', 'user')|map(attribute='n')|list }} "
                        "{{ msgs|map(attribute='n', default=0)|list }} {{ msgs|selectattr('n', 'defined')|list|length }}",
                        ctx),
              "2 [1] [2, 1, 0] 2");
    EXPECT_EQ(render_ok("{{ [1, 2, 3]|join(', ') }} {{ ['a', 'A', 'b']|unique|list }} {{ {'b': 1, 'a': 2}|dictsort }} "
                        "{{ {'x': 1}|items|list }} {{ [1, 2, 3]|select('odd')|list }} {{ [1, 2, 3]|reject('odd')|list }}"),
              "1, 2, 3 ['a', 'b'] [('a', 2), ('b', 1)] [('x', 1)] [1, 3] [2]");
    EXPECT_EQ(render_ok("{{ undefined_name|default('d') }} {{ ''|default('d', true) }} {{ none|default('d') }} "
                        "{{ '42'|int + 1 }} {{ '4.5'|float }} {{ 'x'|int(7) }} {{ 2.5|round }} {{ 2.675|round(2) }}"),
              "d d None 43 4.5 7 2.0 2.67");
    EXPECT_EQ(render_ok("{{ 'a\\nb\\n\\nc'|indent(2) }}|{{ 'a\\nb'|indent(2, first=true) }}"), "a\n  b\n\n  c|  a\n  b");
    EXPECT_EQ(render_ok("{{ 'a-b-c'|replace('-', '+') }} {{ 'aaa'|replace('a', 'b', 2) }} {{ 'one two  three'|wordcount }} "
                        "{{ 'ab'|center(6) }}| {{ [1, 2, 3]|sum }} {{ [3, 9, 2]|max }} {{ [3, 9, 2]|min }}"),
              "a+b+c bba 3   ab  | 6 9 2");
    EXPECT_EQ(render_ok("{{ ('<b>'|safe) + '<i>' }} {{ '<&>'|e }} {{ [1, 2, 3, 4, 5]|batch(2)|list }}"),
              "<b>&lt;i&gt; &lt;&amp;&gt; [[1, 2], [3, 4], [5]]");
}

TEST(chat_template, tojson_matches_transformers) {
    const json ctx = json::parse(R"({"x": {"b": "\u00e9<\"\n", "a": [1, 2.0, null, true], "e": {}, "l": []}})");
    EXPECT_EQ(render_ok("{{ x|tojson }}", ctx),
              "{\"b\": \"\xC3\xA9<\\\"\\n\", \"a\": [1, 2.0, null, true], \"e\": {}, \"l\": []}");
    EXPECT_EQ(render_ok("{{ x.a|tojson(indent=2) }}", ctx), "[\n  1,\n  2.0,\n  null,\n  true\n]");
    EXPECT_EQ(render_ok("{{ x.b|tojson(ensure_ascii=true) }} {{ x|tojson(sort_keys=true, separators=(',', ':')) }}", ctx),
              "\"\\u00e9<\\\"\\n\" {\"a\":[1,2.0,null,true],\"b\":\"\xC3\xA9<\\\"\\n\",\"e\":{},\"l\":[]}");
}

TEST(chat_template, string_methods) {
    EXPECT_EQ(render_ok("{{ '  a b  '.strip() }}|{{ 'xxaxx'.strip('x') }}|{{ ' a'.lstrip() }}|{{ 'a '.rstrip() }}"),
              "a b|a|a|a");
    EXPECT_EQ(render_ok("{{ 'a,b,,c'.split(',') }} {{ ' a  b '.split() }} {{ 'a b c'.split(' ', 1) }} "
                        "{{ 'a/b/c'.rsplit('/', 1) }} {{ 'x</think>y'.split('</think>')[-1] }}"),
              "['a', 'b', '', 'c'] ['a', 'b'] ['a', 'b c'] ['a/b', 'c'] y");
    EXPECT_EQ(render_ok("{{ 'abc'.startswith('ab') }} {{ 'abc'.endswith(('x', 'c')) }} {{ 'abc'.upper() }} "
                        "{{ 'hello world'.title() }} {{ 'abcb'.find('b') }} {{ 'abcb'.count('b') }} {{ '-'.join(['a', 'b']) }}"),
              "True True ABC Hello World 1 2 a-b");
    EXPECT_EQ(render_ok("{{ {'a': 1}.items()|list }} {{ {'a': 1}.keys()|list }} {{ {'a': 1}.values()|list }}"),
              "[('a', 1)] ['a'] [1]");
}

TEST(chat_template, statements) {
    EXPECT_EQ(render_ok("{% for x in [1, 2, 3] %}{{ loop.index }}/{{ loop.length }}{{ ',' if not loop.last }}{% endfor %}"),
              "1/3,2/3,3/3");
    EXPECT_EQ(render_ok("{% for x in [] %}a{% else %}empty{% endfor %}"), "empty");
    EXPECT_EQ(render_ok("{% for x in [1, 2, 3, 4] if x is even %}{{ x }}@{{ loop.index0 }}{% endfor %}"), "2@04@1");
    EXPECT_EQ(render_ok("{% for k, v in {'a': 1, 'b': 2}.items() %}{{ k }}={{ v }};{% endfor %}"), "a=1;b=2;");
    EXPECT_EQ(render_ok("{% for x in [1, 2, 3] %}{% if x == 2 %}{% continue %}{% endif %}{% if x == 3 %}{% break %}"
                        "{% endif %}{{ x }}{% endfor %}"),
              "1");
    EXPECT_EQ(render_ok("{% for x in 'ab' %}{{ loop.previtem is defined }}{{ loop.nextitem }}{{ loop.cycle('o', 'e') }}{% endfor %}"),
              "FalseboTruee");
    // Loop bodies have their own scope; namespaces carry state out.
    EXPECT_EQ(render_ok("{% set x = 1 %}{% for i in [1, 2] %}{% set x = i %}{% endfor %}{{ x }}"), "1");
    EXPECT_EQ(render_ok("{% set ns = namespace(n=0) %}{% for i in [1, 2] %}{% set ns.n = ns.n + i %}{% endfor %}{{ ns.n }}"),
              "3");
    EXPECT_EQ(render_ok("{% set a, b = 1, 2 %}{{ a }}{{ b }}{% set t %}  block {{ a }}  {% endset %}[{{ t }}]"),
              "12[  block 1  ]");
    EXPECT_EQ(render_ok("{% filter upper %}abc{% endfilter %}{% set s | trim %}  x  {% endset %}[{{ s }}]"), "ABC[x]");
    EXPECT_EQ(render_ok("{% if 0 %}a{% elif 1 %}b{% else %}c{% endif %}{% with y = 5 %}{{ y }}{% endwith %}[{{ y }}]"),
              "b5[]");
}

TEST(chat_template, macros) {
    EXPECT_EQ(render_ok("{% macro greet(name, punct='!') %}Hi {{ name }}{{ punct }}{% endmacro %}"
                        "{{ greet('Ann') }} {{ greet('Bob', punct='?') }} {{ greet(name='Cy') }}"),
              "Hi Ann! Hi Bob? Hi Cy!");
    // Recursion, and macros seeing later top-level definitions at call time.
    EXPECT_EQ(render_ok("{% macro f(n) %}{% if n > 0 %}{{ n }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(3) }}"), "321");
    EXPECT_EQ(render_ok("{% macro a() %}{{ b() }}{% endmacro %}{% macro b() %}B{% endmacro %}{{ a() }}"), "B");
    EXPECT_EQ(render_ok("{% macro box() %}[{{ caller() }}]{% endmacro %}{% call box() %}inside{% endcall %}"), "[inside]");
}

TEST(chat_template, whitespace_control) {
    EXPECT_EQ(render_ok("a  {{- 'b' -}}  c"), "abc");
    EXPECT_EQ(render_ok("  {% if true %}\n  x\n  {% endif %}\n  y"), "  x\n  y");
    EXPECT_EQ(render_ok("{% if true %}a{% endif %}\n"), "a");  // trailing newline of the template dropped
    EXPECT_EQ(render_ok("a\n{# comment #}\nb"), "a\nb");
    EXPECT_EQ(render_ok("a\r\nb\rc"), "a\nb\nc");
    EXPECT_EQ(render_ok("  {%+ if true %}x{% endif +%}\ny"), "  x\ny");
    EXPECT_EQ(render_ok("{% raw %}{{ x }}{% endraw %}"), "{{ x }}");
}

TEST(chat_template, undefined_and_none_semantics) {
    EXPECT_EQ(render_ok("{{ none|trim }}|{{ undefined_name|trim }}|{{ none|lower }}|{{ undefined_name|length }}"),
              "None||none|0");
    EXPECT_EQ(render_ok("{{ undefined_name is iterable }} {{ undefined_name is mapping }} {{ none is none }} "
                        "{{ 1 is number }} {{ true is number }} {{ 1 is integer }} {{ 'a' is string }} {{ [1] is sequence }}"),
              "True False True True True True True True");
    EXPECT_EQ(render_ok("{% for x in undefined_name %}x{% endfor %}{{ 'a' in undefined_name }}"), "False");
    EXPECT_NE(render_err("{{ undefined_name + 1 }}").find("'undefined_name' is undefined"), std::string::npos);
    EXPECT_NE(render_err("{{ undefined_name.attr }}").find("'undefined_name' is undefined"), std::string::npos);
    render_err("{% for x in none %}{% endfor %}");
    render_err("{{ 'a' + 1 }}");
    render_err("{{ [1].append(2) }}");  // the immutable sandbox forbids mutation
}

TEST(chat_template, builtins) {
    EXPECT_EQ(render_ok("{{ range(3)|list }} {{ range(1, 7, 2)|list }} {{ dict(a=1) }} {{ namespace(a=1) }}"),
              "[0, 1, 2] [1, 3, 5] {'a': 1} <Namespace {'a': 1}>");
    EXPECT_EQ(render_ok("{{ strftime_now('%d %b %Y') }}"), "26 Jul 2024");
    render_err("{{ range(1000000)|length }}");
}

TEST(chat_template, errors_name_the_construct_and_position) {
    std::string m = render_err("ab\n{% if x %}never closed");
    EXPECT_NE(m.find("line 2, column 1"), std::string::npos) << m;
    EXPECT_NE(m.find("'if'"), std::string::npos) << m;
    m = render_err("{{ x ");
    EXPECT_NE(m.find("unterminated"), std::string::npos) << m;
    m = render_err("{# x ");
    EXPECT_NE(m.find("comment"), std::string::npos) << m;
    m = render_err("hello {{ x|frobnicate }}");
    EXPECT_NE(m.find("unknown filter 'frobnicate'"), std::string::npos) << m;
    EXPECT_NE(m.find("line 1, column 12"), std::string::npos) << m;
    // As in Jinja2 3.x: inside an if (or inline if) an unknown filter only fails when evaluated.
    EXPECT_EQ(render_ok("{% if false %}{{ x|frobnicate }}{% endif %}{{ 1 if true else x|frobnicate }}ok"), "1ok");
    m = render_err("{% if true %}{{ x|frobnicate }}{% endif %}");
    EXPECT_NE(m.find("no filter named 'frobnicate'"), std::string::npos) << m;
    render_err("{% if false %}{% for a in [] %}{{ x|frobnicate }}{% endfor %}{% endif %}");
    m = render_err("{{ x is frobnicated }}");
    EXPECT_NE(m.find("unknown test 'frobnicated'"), std::string::npos) << m;
    m = render_err("{% frob %}");
    EXPECT_NE(m.find("unknown tag 'frob'"), std::string::npos) << m;
    m = render_err("{% for x in y %}{% endif %}");
    EXPECT_NE(m.find("endif"), std::string::npos) << m;
    m = render_err("{{ 'abc }}");
    EXPECT_NE(m.find("string"), std::string::npos) << m;
    m = render_err("{% break %}");
    EXPECT_NE(m.find("outside"), std::string::npos) << m;
    m = render_err("{% include 'x.jinja' %}");
    EXPECT_NE(m.find("include"), std::string::npos) << m;
    // raise_exception(msg) becomes exactly that message.
    EXPECT_EQ(render_err("{{ raise_exception('Conversation roles must alternate user/assistant') }}"),
              "Conversation roles must alternate user/assistant");
    m = render_err("{{ 1 / 0 }}");
    EXPECT_NE(m.find("division by zero"), std::string::npos) << m;
}

TEST(chat_template, runaway_templates_fail_cleanly) {
    std::string m = render_err("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}");
    EXPECT_NE(m.find("nested deeper"), std::string::npos) << m;
    m = render_err("{% set ns = namespace(s='x') %}{% for i in range(100) %}{% set ns.s = ns.s + ns.s %}{% endfor %}");
    EXPECT_NE(m.find("exceeds the limit"), std::string::npos) << m;
    m = render_err("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}");
    EXPECT_NE(m.find("budget"), std::string::npos) << m;
    m = render_err("{{ " + std::string(5000, '(') + "1" + std::string(5000, ')') + " }}");
    EXPECT_NE(m.find("nested too deeply"), std::string::npos) << m;
    std::string long_sum = "{{ 1";
    for (int i = 0; i < 5000; ++i) long_sum += " + 1";
    m = render_err(long_sum + " }}");
    EXPECT_NE(m.find("nested too deeply"), std::string::npos) << m;
    kvs::chat_render_options small = test_options();
    small.max_output_bytes = 10;
    auto t = kvs::chat_template::parse("{{ 'x' * 11 }}");
    ASSERT_TRUE(t.is_ok());
    EXPECT_FALSE(t->render(json::object(), small).is_ok());
}

TEST(chat_template, apply_chat_template_builds_the_transformers_context) {
    auto t = kvs::chat_template::parse(
        "{{ bos_token }}{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}{{ tools is none }}{{ documents is none }}{{ eos_token }}{{ extra_var }}");
    ASSERT_TRUE(t.is_ok()) << t.message();
    const nlohmann::json msgs = nlohmann::json::parse(R"([{"role": "user", "content": "hi"}])");
    auto r = kvs::apply_chat_template(*t, msgs, true, "<s>", "</s>", nullptr, {{"extra_var", 7}});
    ASSERT_TRUE(r.is_ok()) << r.message();
    EXPECT_EQ(r.value(), "<s><user>hi<assistant>TrueTrue</s>7");
    // ordered_json keeps the caller's key order (tool schemas print in request order).
    auto t2 = kvs::chat_template::parse("{{ tools|tojson }}");
    ASSERT_TRUE(t2.is_ok());
    const json tools = json::parse(R"([{"z": 1, "a": 2}])");
    auto r2 = kvs::apply_chat_template(*t2, json::array(), false, "", "", tools);
    ASSERT_TRUE(r2.is_ok()) << r2.message();
    EXPECT_EQ(r2.value(), "[{\"z\": 1, \"a\": 2}]");
}

// ============================================================================================
// Real templates
// ============================================================================================

TEST(chat_template, all_shared_templates_parse) {
    KVS_SKIP_IF_MISSING(first, "templates/meta-llama-Llama-3.1-8B-Instruct.jinja");
    for (const char* name : template_files) {
        const std::string path = kvs::test::shared_file(std::string("templates/") + name);
        ASSERT_FALSE(path.empty()) << name;
        auto t = kvs::chat_template::parse(read_file(path));
        EXPECT_TRUE(t.is_ok()) << name << ": " << t.message();
    }
}

TEST(chat_template, llama31_golden_prompt) {
    KVS_SKIP_IF_MISSING(path, "templates/meta-llama-Llama-3.1-8B-Instruct.jinja");
    auto t = kvs::chat_template::parse(read_file(path));
    ASSERT_TRUE(t.is_ok()) << t.message();
    const json msgs = json::parse(R"([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])");
    auto r = kvs::apply_chat_template(*t, msgs, true, "<|begin_of_text|>", "<|eot_id|>", nullptr, json::object(),
                                      test_options());
    ASSERT_TRUE(r.is_ok()) << r.message();
    EXPECT_EQ(r.value(),
              "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
              "Today Date: 26 Jul 2024\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

TEST(chat_template, concurrent_renders_agree) {
    KVS_SKIP_IF_MISSING(path, "templates/meta-llama-Llama-3.1-8B-Instruct.jinja");
    auto t = kvs::chat_template::parse(read_file(path));
    ASSERT_TRUE(t.is_ok()) << t.message();
    const json ctx = make_context(conversations()[9], true);
    auto expected = t->render(ctx, test_options());
    ASSERT_TRUE(expected.is_ok()) << expected.message();
    std::vector<std::thread> threads;
    std::vector<int> mismatches(4, 0);
    for (int k = 0; k < 4; ++k) {
        threads.emplace_back([&, k] {
            for (int i = 0; i < 50; ++i) {
                auto r = t->render(ctx, test_options());
                if (!r.is_ok() || r.value() != expected.value()) ++mismatches[static_cast<size_t>(k)];
            }
        });
    }
    for (auto& th : threads) th.join();
    for (int m : mismatches) EXPECT_EQ(m, 0);
}

// Random mutations of the real templates must parse or fail cleanly, and render or fail cleanly.
TEST(chat_template, mutated_templates_never_crash) {
    KVS_SKIP_IF_MISSING(first, "templates/meta-llama-Llama-3.1-8B-Instruct.jinja");
    std::mt19937_64 rng(1234);
    static const char* const snippets[] = {"{{", "}}", "{%", "%}", "{#", "#}", "-", "+", "(", ")", "[", "]", "|", ".",
                                           "'", "\"", "\\", " if ", " for ", " in ", " endfor ", " endif ", "{% endif %}",
                                           "{% for x in messages %}", "{% macro m() %}", "~", "*", "**", "//", ",", ":",
                                           "loop.", "ns.", " is ", " not ", "\n", "\xC3", "\xE4\xB8\x96", "0", "1e9"};
    const auto convs = conversations();
    kvs::chat_render_options opt = test_options();
    opt.max_steps = 200000;
    opt.max_output_bytes = 1 << 20;
    int parsed = 0, rendered = 0, total = 0;
    for (const char* name : template_files) {
        const std::string src = read_file(kvs::test::shared_file(std::string("templates/") + name));
        for (int iter = 0; iter < 120; ++iter) {
            std::string m = src;
            const int n_edits = 1 + static_cast<int>(rng() % 4);
            for (int e = 0; e < n_edits && !m.empty(); ++e) {
                const size_t pos = rng() % m.size();
                switch (rng() % 4) {
                    case 0: m.erase(pos, 1 + rng() % 16); break;
                    case 1: m.insert(pos, snippets[rng() % std::size(snippets)]); break;
                    case 2: m[pos] = static_cast<char>(rng() % 256); break;
                    default: {
                        const size_t len = std::min<size_t>(1 + rng() % 64, m.size() - pos);
                        m.insert(rng() % m.size(), m.substr(pos, len));
                    }
                }
            }
            ++total;
            auto t = kvs::chat_template::parse(m);
            if (!t.is_ok()) {
                EXPECT_FALSE(t.message().empty());
                continue;
            }
            ++parsed;
            const json ctx = make_context(convs[static_cast<size_t>(iter) % convs.size()], iter % 2 == 0);
            auto r = t->render(ctx, opt);
            if (r.is_ok()) ++rendered;
            else EXPECT_FALSE(r.message().empty());
        }
    }
    std::printf("mutations: %d total, %d parsed, %d rendered\n", total, parsed, rendered);
    EXPECT_GT(parsed, 0);
}

// The main check: byte-identical output to Jinja2 for every template x conversation x
// add_generation_prompt, and identical success/failure.
TEST(chat_template, byte_identical_to_jinja2) {
    std::string why;
    if (!reference_available(&why)) GTEST_SKIP() << "Jinja2 reference unavailable: " << why;
    KVS_SKIP_IF_MISSING(first, "templates/meta-llama-Llama-3.1-8B-Instruct.jinja");
    std::vector<std::pair<std::string, std::string>> templates;  // (name, source)
    for (const char* name : template_files)
        templates.emplace_back(name, read_file(kvs::test::shared_file(std::string("templates/") + name)));
    for (const auto& [name, src] : inline_templates) templates.emplace_back(name, src);

    struct case_info {
        std::string tmpl, conv;
        bool agp;
    };
    std::vector<case_info> info;
    std::vector<std::pair<std::string, json>> cases;
    const auto convs = conversations();
    for (const auto& [tname, src] : templates) {
        for (const auto& c : convs) {
            for (bool agp : {false, true}) {
                info.push_back({tname, c.name, agp});
                cases.emplace_back(src, make_context(c, agp));
            }
        }
    }
    const auto ref = reference_render(cases);
    ASSERT_EQ(ref.size(), cases.size());
    std::map<std::string, std::pair<int, int>> per_template;  // name -> (identical renders, both-failed)
    for (size_t i = 0; i < cases.size(); ++i) {
        auto mine = render(cases[i].first, cases[i].second);
        const std::string where = info[i].tmpl + " / " + info[i].conv + " / add_generation_prompt=" +
                                  (info[i].agp ? "true" : "false");
        if (ref[i].ok) {
            EXPECT_TRUE(mine.is_ok()) << where << ": Jinja2 rendered, kvs failed: " << mine.message();
            if (!mine.is_ok()) continue;
            EXPECT_EQ(mine.value(), ref[i].text) << where << ": " << first_difference(ref[i].text, mine.value());
            if (mine.value() == ref[i].text) ++per_template[info[i].tmpl].first;
        } else {
            EXPECT_FALSE(mine.is_ok()) << where << ": Jinja2 failed (" << ref[i].text << ") but kvs rendered:\n"
                                       << (mine.is_ok() ? mine.value() : "");
            if (!mine.is_ok()) ++per_template[info[i].tmpl].second;
        }
    }
    for (const auto& [name, counts] : per_template) {
        std::printf("  %-55s identical: %3d   both failed: %3d\n", name.c_str(), counts.first, counts.second);
        EXPECT_GT(counts.first, 0) << name << ": no conversation rendered successfully";
    }
}

// The expression language against Jinja2, snippet by snippet.
TEST(chat_template, expressions_match_jinja2) {
    std::string why;
    if (!reference_available(&why)) GTEST_SKIP() << "Jinja2 reference unavailable: " << why;
    const json ctx = json::parse(R"({
        "xs": [3, 1, 2], "s": "  H\u00e9llo, W\u00f6rld  ", "d": {"b": 1, "a": [1, 2], "items": "key"},
        "f": 2.5, "n": null, "t": true, "e": "", "big": 12345678901, "neg": -7,
        "msgs": [{"role": "user", "content": "x"}, {"role": "assistant", "content": null}, {"role": "tool"}],
        "nested": {"type": "array", "items": {"type": "string"}}, "uni": "\u4e16\u754c \ud83c\udf89 \u00a0x\u3000"})");
    const char* const snippets[] = {
        "{{ xs }}{{ s }}{{ d }}{{ f }}{{ n }}{{ t }}{{ e }}{{ big }}{{ neg }}{{ msgs }}{{ uni }}",
        "{{ s|trim }}|{{ s|upper }}|{{ s|lower }}|{{ s|title }}|{{ s|capitalize }}|{{ s|length }}|{{ s|wordcount }}",
        "{{ s.strip() }}|{{ s.split() }}|{{ s.split(',') }}|{{ s[2:5] }}|{{ s[::-1] }}|{{ s[-3] }}",
        "{{ uni|trim }}|{{ uni|length }}|{{ uni[1:4] }}|{{ uni.split() }}|{{ [uni] }}|{{ uni|tojson }}|{{ uni|list }}",
        "{{ xs|sort }}{{ xs|sort(reverse=true) }}{{ xs|max }}{{ xs|min }}{{ xs|sum }}{{ xs|first }}{{ xs|last }}{{ xs|length }}",
        "{{ xs|reverse|list }}{{ xs|unique|list }}{{ xs|batch(2)|list }}{{ xs|join('-') }}{{ xs|select('odd')|list }}",
        "{{ d|tojson }}|{{ d|tojson(indent=2) }}|{{ d|tojson(indent='\\t') }}|{{ d|dictsort }}|{{ d|items|list }}|{{ d|list }}",
        "{{ d.items() }}|{{ d.items is callable }}|{{ d['items'] }}|{{ d.get('b') }}|{{ d.get('zz') }}|{{ d.keys()|list }}",
        "{{ msgs|map(attribute='role')|join(',') }}|{{ msgs|selectattr('content')|list|length }}|"
        "{{ msgs|rejectattr('content', 'none')|map(attribute='role')|list }}|{{ msgs|selectattr('content', 'defined')|list|length }}",
        "{{ nested.items is defined }}|{{ nested['items'] }}|{{ nested.type }}|{{ nested.items is defined }}",
        "{{ f|round }}|{{ f|int }}|{{ f|string }}|{{ big * 3 }}|{{ big / 7 }}|{{ neg // 2 }}|{{ neg % 3 }}|{{ 10 ** -2 }}",
        "{{ 0.1 + 0.2 }}|{{ 1/3 }}|{{ 2/3 * 1e20 }}|{{ 1e-7 }}|{{ 123456789.0 * 1000000 }}|{{ -0.0 }}|{{ 1e22 }}",
        "{{ n|tojson }}|{{ t|tojson }}|{{ f|tojson }}|{{ n is none }}|{{ t is boolean }}|{{ e is string }}|{{ n|string }}",
        "{{ 'a' if n else 'b' }}|{{ n or 'dflt' }}|{{ e or 'empty' }}|{{ (xs|length > 2) and 'long' }}",
        "{% for m in msgs %}{{ loop.index }}{{ loop.revindex }}{{ loop.first }}{{ loop.last }}{{ loop.previtem.role }}|{% endfor %}",
        "{% for k in d %}{{ k }},{% endfor %}{% for c in 'ab' %}{{ c }}{% endfor %}{% for a, b in [(1, 2), (3, 4)] %}{{ a + b }}{% endfor %}",
        "{% set ns = namespace(found=false, items=[]) %}{% for m in msgs %}{% if m.role == 'tool' %}{% set ns.found = true %}"
        "{% endif %}{% set ns.items = ns.items + [m.role] %}{% endfor %}{{ ns.found }}{{ ns.items }}",
        "{{ '%s'|e }}{{ '<a href=\"x\">'|e }}{{ ('a'|safe + '<b>') }}{{ ('<'|safe) + ('>'|safe) }}{{ '<b>' ~ ('x'|safe) }}",
        "{{ [1, [2, (3, 'x')], {'k': none}] }}|{{ (1,) }}|{{ () }}|{{ {} }}|{{ [1.0, -2.5e-10] }}",
        "{{ \"it's\" }}|{{ ['it\\'s', \"q\\\"\", 'back\\\\slash', 'tab\\t', 'nl\\n', '\\x01'] }}",
        "{{ 'x'.center(9) }}|{{ 'ab'|center(7) }}|{{ 'a\\nb\\nc'|indent(3, true) }}|{{ 'a\\n\\nb'|indent(2, blank=true) }}",
        "{{ 'Hello World'.lower().replace('o', '0') }}|{{ 'a b'.title() }}|{{ 'abc'.startswith('b') }}|{{ ' '.join(['a','b']) }}",
        "{{ range(5)|list }}|{{ range(2, 10, 3)|list }}|{{ range(5, 0, -2)|list }}|{{ dict(a=1, b=[2]) }}",
        "{{ 1 < 2 }}{{ 'a' < 'b' }}{{ [1] == [1] }}{{ (1,) == [1] }}{{ {'a': 1} == {'a': 1} }}{{ 1 == true }}{{ none == none }}",
        "{% macro m(a, b=2, c='x') %}{{ a }}{{ b }}{{ c }}{{ varargs }}{{ kwargs }}{% endmacro %}{{ m(1) }}|{{ m(1, 3, c='y') }}",
        "{{ xs|map('string')|join }}|{{ ['a', 'B']|map('upper')|list }}|{{ xs|map('int')|sum }}|{{ [' a ']|map('trim')|list }}",
        "{{ msgs|selectattr('role', 'in', ['user', 'tool'])|map(attribute='role')|list }}|{{ xs|select('>', 1)|list }}",
        "{{ ['b', 'a', 'C']|sort }}|{{ ['b', 'a', 'C']|sort(case_sensitive=true) }}|{{ msgs|sort(attribute='role')|map(attribute='role')|list }}",
        "{{ 'abc'|replace('', '-') }}|{{ 'aXbXc'.split('X', 1) }}|{{ 'a\\tb  c'.split() }}|{{ ' x '.rsplit(None, 0) }}",
        "{{ 5|string + 'a' }}|{{ '3'|int + '4'|int }}|{{ '0x1A'|int(0, 16) }}|{{ ' 12 '|int }}|{{ '1_000'|int }}|{{ 'nan'|float }}",
        "{{ 12|float }}|{{ 'abc'|float }}|{{ true|int }}|{{ 3.99|int }}|{{ -3.99|int }}|{{ 7|round(-1) }}|{{ 2.5|round(0, 'ceil') }}",
        "{{ d.b is divisibleby 1 }}|{{ 4 is even }}|{{ 3 is odd }}|{{ xs is iterable }}|{{ d is mapping }}|{{ s is sequence }}",
        "{{ 'x' is lower }}|{{ 'X' is upper }}|{{ f is float }}|{{ 1 is float }}|{{ n is sameas none }}|{{ t is true }}|{{ t is false }}",
        "{{ strftime_now('%Y-%m-%d %H:%M %A %B %j') }}|{{ strftime_now('%d %b %Y') }}",
        "{{ xs[10] is defined }}|{{ xs[1:10] }}|{{ xs[-10:] }}|{{ xs[::-2] }}|{{ s[100:] }}|{{ 'abc'[5:1:-1] }}",
        "{%- for x in xs -%}\n  {{ x }}\n{%- endfor -%}\n|{% for x in xs %}\n  {{ x }}\n{% endfor %}|",
        "  {% if true %}\n    indented\n  {% endif %}\n\t{% if true %}tab{% endif %}\n{# c #}\n{{ 'v' }}\n",
        "{% set t %}\n  {% for x in xs %}{{ x }} {% endfor %}\n{% endset %}[{{ t }}]{% filter trim %}  pad  {% endfilter %}",
        "{{ msgs[0]['role'] }}{{ msgs[-1].role }}{{ msgs[1].content }}{{ msgs[1].content is none }}{{ msgs[2].content is defined }}",
        "{{ xs|tojson }}{{ (1, 2)|tojson }}{{ 'q\"\\\\'|tojson }}{{ {'a': {'b': []}}|tojson(indent=1) }}{{ xs|tojson(separators=(',', ':')) }}",
        "{{ [] | first is defined }}|{{ []|max is defined }}|{{ undefined_var|default(xs)|length }}|{{ undefined_var|list }}",
    };
    std::vector<std::pair<std::string, json>> cases;
    for (const char* s : snippets) cases.emplace_back(s, ctx);
    const auto ref = reference_render(cases);
    ASSERT_EQ(ref.size(), cases.size());
    for (size_t i = 0; i < cases.size(); ++i) {
        auto mine = render(cases[i].first, cases[i].second);
        if (ref[i].ok) {
            EXPECT_TRUE(mine.is_ok()) << cases[i].first << "\n  Jinja2 rendered, kvs failed: " << mine.message();
            if (mine.is_ok()) {
                EXPECT_EQ(mine.value(), ref[i].text) << cases[i].first;
            }
        } else {
            EXPECT_FALSE(mine.is_ok()) << cases[i].first << "\n  Jinja2 failed (" << ref[i].text << ") but kvs rendered: "
                                       << (mine.is_ok() ? mine.value() : "");
        }
    }
}

// Mutated real templates that Jinja2 accepts must render identically here too (and ones it
// rejects must fail here): a differential fuzz of the lexer's whitespace rules and the parser.
TEST(chat_template, mutated_templates_match_jinja2) {
    std::string why;
    if (!reference_available(&why)) GTEST_SKIP() << "Jinja2 reference unavailable: " << why;
    KVS_SKIP_IF_MISSING(first, "templates/meta-llama-Llama-3.1-8B-Instruct.jinja");
    std::mt19937_64 rng(99);
    static const char* const snippets[] = {"{{", "}}", "{%", "%}", "{#", "#}", "-", "+", " ", "\n", "  ", "\t",
                                           "{%- if true %}", "{% endif -%}", "{{- 'x' -}}", "{# c #}", "\n  ",
                                           "{%+ if true %}y{% endif +%}", "'", "(", ")", "|trim", "|upper", ".strip()"};
    const auto convs = conversations();
    std::vector<std::pair<std::string, json>> cases;
    for (const char* name : template_files) {
        const std::string src = read_file(kvs::test::shared_file(std::string("templates/") + name));
        for (int iter = 0; iter < 40; ++iter) {
            std::string m = src;
            const int n_edits = 1 + static_cast<int>(rng() % 3);
            for (int e = 0; e < n_edits && !m.empty(); ++e) {
                const size_t pos = rng() % m.size();
                if (rng() % 3 == 0) m.erase(pos, 1 + rng() % 4);
                else m.insert(pos, snippets[rng() % std::size(snippets)]);
            }
            try {
                (void)json(m).dump();  // keep valid UTF-8 only: Python must see the same text
            } catch (const std::exception&) {
                continue;
            }
            cases.emplace_back(m, make_context(convs[static_cast<size_t>(iter) % 4], iter % 2 == 0));
        }
    }
    const auto ref = reference_render(cases);
    ASSERT_EQ(ref.size(), cases.size());
    int same_output = 0, both_failed = 0;
    for (size_t i = 0; i < cases.size(); ++i) {
        auto mine = render(cases[i].first, cases[i].second);
        if (ref[i].ok) {
            EXPECT_TRUE(mine.is_ok()) << "case " << i << ": Jinja2 rendered, kvs failed: " << mine.message();
            if (!mine.is_ok()) continue;
            EXPECT_EQ(mine.value(), ref[i].text) << "case " << i << ": " << first_difference(ref[i].text, mine.value());
            same_output += mine.value() == ref[i].text;
        } else {
            EXPECT_FALSE(mine.is_ok()) << "case " << i << ": Jinja2 failed (" << ref[i].text << ") but kvs rendered";
            both_failed += !mine.is_ok();
        }
    }
    std::printf("mutations vs Jinja2: %zu cases, %d identical, %d failed in both\n", cases.size(), same_output,
                both_failed);
}
