// kvserve: run, serve and inspect large language models. `kvserve help` lists the commands.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>

#include "command.h"

namespace kvs::tools {

std::vector<command>& command_registry() {
    static std::vector<command> registry;
    return registry;
}

}  // namespace kvs::tools

static void print_usage(FILE* out) {
    auto cmds = kvs::tools::command_registry();
    std::sort(cmds.begin(), cmds.end(), [](auto& a, auto& b) { return std::strcmp(a.name, b.name) < 0; });
    std::fprintf(out, "usage: kvserve <command> [options]   (kvserve <command> --help for its options)\n\ncommands:\n");
    for (auto& c : cmds) std::fprintf(out, "  %-12s %s\n", c.name, c.summary);
}

int main(int argc, char** argv) {
    if (argc < 2) {
        print_usage(stderr);
        return 2;
    }
    std::string name = argv[1];
    if (name == "help" || name == "--help" || name == "-h") {
        print_usage(stdout);
        return 0;
    }
    if (name == "--version") {
        std::printf("kvserve 0.1.0\n");
        return 0;
    }
    for (auto& c : kvs::tools::command_registry()) {
        if (name == c.name) {
            std::string prog = std::string("kvserve ") + c.name;
            argv[1] = prog.data();
            return c.fn(argc - 1, argv + 1);
        }
    }
    std::fprintf(stderr, "kvserve: unknown command '%s'\n\n", name.c_str());
    print_usage(stderr);
    return 2;
}
