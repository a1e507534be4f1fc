// Small helpers shared by the kvserve subcommands.
#pragma once

#include <string>

#include <CLI/CLI.hpp>

#include "model/llama.h"

namespace kvs::tools {

// The shared fixture folder: $KVSERVE_SHARED, else ../shared from the working directory.
std::string shared_dir();
// The default model: $KVSERVE_MODEL, else <shared>/models/stories260K.gguf.
std::string default_model_path();
// Says plainly how to point a command at a model when the default one is absent.
std::string missing_model_help(const std::string& path);
// Threads to use by default: the hardware's cores.
int default_threads();
// Load options for a command's --no-repack flag.
inline load_options repack_options(bool no_repack) {
    load_options o;
    if (no_repack) o.repack = weight_repack::never;
    return o;
}
// Runs CLI11 parsing; returns -1 to continue or the exit code (0 for --help, 2 for errors).
int parse_cli(CLI::App& app, int argc, char** argv);

}  // namespace kvs::tools
