// `hvpatch sym TARGET NAME | ADDR | --all`: the guest's symbols, decoded
// from its memory, printed as /proc/kallsyms prints them.
#include <cstdio>

#include "cli/commands.h"
#include "cli/output.h"
#include "cli/snapshot.h"
#include "hvpatch/error.h"
#include "introspect/modules.h"

namespace hvpatch::cli {
namespace {

struct SymOptions {
    std::string target, query;
    bool all = false, json = false;
};

std::string kallsyms_line(const KernelSymbol& s) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%016llx %c ", static_cast<unsigned long long>(s.address.value), s.type);
    std::string line = buf + s.name;
    if (!s.module.empty()) line += "\t[" + s.module + "]";
    return line;
}

nlohmann::json symbol_json(const KernelSymbol& s) {
    nlohmann::json j = {{"address", hex(s.address.value)}, {"type", std::string(1, s.type)}, {"name", s.name}};
    if (!s.module.empty()) j["module"] = s.module;
    return j;
}

void run_sym(const SymOptions& opt, const GlobalOptions& global) {
    if (opt.all == !opt.query.empty()) throw Error(ErrorKind::Usage, "sym: give a NAME, an ADDR, or --all");
    bool by_address = opt.query.rfind("0x", 0) == 0;
    std::uint64_t address = by_address ? parse_number(opt.query, "address") : 0;

    Snapshot snap(opt.target, global);
    const KallsymsTable& table = snap.kernel().symbols();
    ModuleSymbolResolver modules = ModuleSymbolResolver::for_kernel(snap.kernel());
    std::vector<KernelSymbol> symbols;
    std::optional<KallsymsTable::Resolved> resolved;
    // vmlinux first, then each module in list order: /proc/kallsyms' order.
    auto module_symbols_where = [&](auto&& keep) {
        for (const auto& module : modules.modules())
            for (auto& s : module_symbols(snap.kernel(), module))
                if (keep(s)) symbols.push_back(std::move(s));
    };
    if (opt.all) {
        for (const auto& s : table.symbols())
            if (!s.name.empty()) symbols.push_back(s);  // /proc/kallsyms skips empty names
        module_symbols_where([](const KernelSymbol& s) { return !s.name.empty(); });
    } else if (by_address) {
        resolved = resolve_kernel_address(table, modules, address);
        if (!resolved)
            throw Error(ErrorKind::Guest, snap.machine().name() + ": no kernel symbol contains " + hex(address));
    } else {
        symbols = table.find_all(opt.query);
        module_symbols_where([&](const KernelSymbol& s) { return s.name == opt.query; });
        if (symbols.empty())
            throw Error(ErrorKind::Guest, snap.machine().name() + ": the guest kernel has no symbol '" + opt.query + "'");
    }
    snap.release();

    if (resolved) {
        const auto& r = *resolved;
        if (opt.json) {
            nlohmann::json j = symbol_json(r.symbol);
            j["offset"] = hex_short(r.offset);
            j["size"] = hex_short(r.size);
            j["query"] = hex(address);
            std::printf("%s\n", j.dump(2).c_str());
        } else {
            std::printf("%s+%s/%s%s\n", r.symbol.name.c_str(), hex_short(r.offset).c_str(), hex_short(r.size).c_str(),
                        r.symbol.module.empty() ? "" : (" [" + r.symbol.module + "]").c_str());
        }
        return;
    }
    if (opt.json) {
        nlohmann::json list = nlohmann::json::array();
        for (const auto& s : symbols) list.push_back(symbol_json(s));
        std::printf("%s\n", nlohmann::json{{"symbols", list}}.dump(2).c_str());
        return;
    }
    std::string out;
    for (const auto& s : symbols) out += kallsyms_line(s) + "\n";
    std::fputs(out.c_str(), stdout);
}

}  // namespace

void add_sym_command(CLI::App& app, const GlobalOptions& global) {
    auto opt = std::make_shared<SymOptions>();
    auto* cmd = app.add_subcommand("sym", "Resolve guest kernel symbols (like /proc/kallsyms)");
    cmd->add_option("target", opt->target, kTargetHelp)->required();
    cmd->add_option("query", opt->query, "symbol NAME, or ADDR (0x...) to resolve to symbol+offset/size");
    cmd->add_flag("--all", opt->all, "every symbol, in /proc/kallsyms format");
    cmd->add_flag("--json", opt->json, "Print JSON");
    cmd->callback([opt, &global] { run_sym(*opt, global); });
}

}  // namespace hvpatch::cli
