#include "common.h"

#include <cstdlib>
#include <filesystem>
#include <thread>

namespace kvs::tools {

std::string shared_dir() {
    if (const char* env = std::getenv("KVSERVE_SHARED"); env && *env) return env;
    return "../shared";
}

std::string default_model_path() {
    if (const char* env = std::getenv("KVSERVE_MODEL"); env && *env) return env;
    return shared_dir() + "/models/stories260K.gguf";
}

std::string missing_model_help(const std::string& path) {
    return "model file '" + path +
           "' not found.\n"
           "Point kvserve at any GGUF model with -m PATH (or set KVSERVE_MODEL=PATH),\n"
           "or set KVSERVE_SHARED to the folder holding models/stories260K.gguf.";
}

int default_threads() {
    unsigned n = std::thread::hardware_concurrency();
    return n == 0 ? 1 : int(n);
}

int parse_cli(CLI::App& app, int argc, char** argv) {
    try {
        app.parse(argc, argv);
    } catch (const CLI::CallForHelp& e) {
        return app.exit(e);
    } catch (const CLI::CallForAllHelp& e) {
        return app.exit(e);
    } catch (const CLI::ParseError& e) {
        app.exit(e);
        return 2;
    }
    return -1;
}

}  // namespace kvs::tools
