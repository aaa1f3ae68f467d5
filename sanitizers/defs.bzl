"""Helpers for targets that cannot run under some sanitizer."""

# target_compatible_with for targets that replace malloc: ASan, TSan, MSan and the fuzz
# config (ASan) interpose malloc themselves, so a second replacement cannot link.
# UBSan has no allocator of its own: those targets build and run under it.
INCOMPATIBLE_WITH_MALLOC_SANITIZERS = select({
    "//sanitizers:asan": ["@platforms//:incompatible"],
    "//sanitizers:tsan": ["@platforms//:incompatible"],
    "//sanitizers:msan": ["@platforms//:incompatible"],
    "//sanitizers:fuzz": ["@platforms//:incompatible"],
    "//conditions:default": [],
})

# A preloaded shared library: under any sanitizer it would need that sanitizer's
# runtime inside every program it is preloaded into (python3, sort, gzip).
INCOMPATIBLE_WITH_ANY_SANITIZER = select({
    "//sanitizers:asan": ["@platforms//:incompatible"],
    "//sanitizers:tsan": ["@platforms//:incompatible"],
    "//sanitizers:ubsan": ["@platforms//:incompatible"],
    "//sanitizers:msan": ["@platforms//:incompatible"],
    "//sanitizers:fuzz": ["@platforms//:incompatible"],
    "//conditions:default": [],
})

# Tools linked with a Debian library that is not MSan-instrumented (capstone): MSan
# cannot see that library's writes and reports them as uninitialized.
INCOMPATIBLE_WITH_MSAN = select({
    "//sanitizers:msan": ["@platforms//:incompatible"],
    "//conditions:default": [],
})
