// Kernel registration for the host harness: turns an `extern "C"` kernel function into a table
// entry that can be launched with a CUDA-style argument array (void** of pointers to values),
// checking the argument count and sizes against the kernel's real signature first.
// Included by the per-module files that ptx/build.rs generates.
#pragma once
#include <cstring>
#include <string>
#include <tuple>
#include <utility>

#include "mxh.h"

namespace mxh {

struct KernelEntry {
    mxh_kernel_info info;
    int (*launch)(const LaunchRequest& req, void** params);
};

// The C++ spelling of T, from the compiler (no RTTI).
template <typename T>
std::string type_name() {
    std::string s = __PRETTY_FUNCTION__;  // "... [with T = const float*; ...]"
    size_t a = s.find("T = ");
    if (a == std::string::npos) return "?";
    a += 4;
    size_t b = s.find_first_of(";]", a);
    std::string t = s.substr(a, b - a);
    for (size_t p; (p = t.find("__nv_bfloat16")) != std::string::npos;) t.replace(p, 13, "bf16");
    return t;
}

template <typename... A>
struct Signature {
    static constexpr unsigned count = sizeof...(A);
    static const unsigned* sizes() {
        static const unsigned s[sizeof...(A) + 1] = {(unsigned)sizeof(A)..., 0};
        return s;
    }
    static const char* text() {
        static const std::string s = [] {
            std::string out = "(";
            const std::string names[] = {type_name<A>()..., ""};
            for (size_t i = 0; i < sizeof...(A); i++) out += (i ? ", " : "") + names[i];
            return out + ")";
        }();
        return s.c_str();
    }
    template <size_t... I>
    static std::tuple<A...> unpack(void** p, std::index_sequence<I...>) {
        return std::tuple<A...>(*static_cast<A*>(p[I])...);
    }
};

template <typename... A>
Signature<A...> signature_of(void (*)(A...)) {
    return {};
}

// Launches kernel F: copies the arguments out of the parameter array, then runs the grid with
// every thread calling F on them.
template <auto F>
int launch_kernel(const LaunchRequest& req, void** params) {
    using S = decltype(signature_of(F));
    auto args = S::unpack(params, std::make_index_sequence<S::count>{});
    return run_grid(
        req, [](void* ctx) { std::apply(F, *static_cast<decltype(args)*>(ctx)); }, &args);
}

template <auto F>
KernelEntry entry(const char* module, const char* name, const char* not_emulated) {
    using S = decltype(signature_of(F));
    return KernelEntry{{module, name, S::text(), S::count, S::sizes(), not_emulated},
                       &launch_kernel<F>};
}

}  // namespace mxh
