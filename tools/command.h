// The kvserve binary's subcommands. Each tools/cmd_*.cpp registers itself with
// KVS_COMMAND(name, summary, fn); main() dispatches on argv[1].
// A command returns the process exit status: 0 ok, 1 runtime error, 2 usage error.
#pragma once

#include <string>
#include <vector>

namespace kvs::tools {

using command_fn = int (*)(int argc, char** argv);  // argv[0] is "kvserve <name>"

struct command {
    const char* name;
    const char* summary;
    command_fn fn;
};

std::vector<command>& command_registry();

struct command_registrar {
    command_registrar(const char* name, const char* summary, command_fn fn) {
        command_registry().push_back({name, summary, fn});
    }
};

}  // namespace kvs::tools

#define KVS_COMMAND(name, summary, fn) \
    static ::kvs::tools::command_registrar kvs_command_registrar_##fn(name, summary, fn)
