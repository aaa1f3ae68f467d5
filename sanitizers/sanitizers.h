// sanitizers.h: which sanitizers this translation unit is built with, and the
// annotations our data structures use to tell them what the kernel guarantees.
//
// ASan, TSan and MSan are detected from the compiler itself (__has_feature), so a
// build flag can never claim a sanitizer that is not really on. UBSan has no such
// feature test; .bazelrc defines CCACHE_SANITIZER_UBSAN=1 next to -fsanitize=undefined
// and the UBSan canary test fails if the define is present without the sanitizer.
#ifndef CCACHE_SANITIZERS_SANITIZERS_H_
#define CCACHE_SANITIZERS_SANITIZERS_H_

#include <stddef.h>

#ifndef __has_feature
#define __has_feature(x) 0
#endif

#if __has_feature(address_sanitizer) || defined(__SANITIZE_ADDRESS__)
#define CCACHE_HAVE_ASAN 1
#else
#define CCACHE_HAVE_ASAN 0
#endif

#if __has_feature(thread_sanitizer) || defined(__SANITIZE_THREAD__)
#define CCACHE_HAVE_TSAN 1
#else
#define CCACHE_HAVE_TSAN 0
#endif

#if __has_feature(memory_sanitizer)
#define CCACHE_HAVE_MSAN 1
#else
#define CCACHE_HAVE_MSAN 0
#endif

#if defined(CCACHE_SANITIZER_UBSAN)
#define CCACHE_HAVE_UBSAN 1
#else
#define CCACHE_HAVE_UBSAN 0
#endif

// --- ASan: poisoning of blocks that sit in our caches.
#if CCACHE_HAVE_ASAN
void __asan_poison_memory_region(void const volatile *addr, size_t size);
void __asan_unpoison_memory_region(void const volatile *addr, size_t size);
int __asan_address_is_poisoned(void const volatile *addr);  // tests and oracles
#define CCACHE_ASAN_POISON(p, n) __asan_poison_memory_region((p), (n))
#define CCACHE_ASAN_UNPOISON(p, n) __asan_unpoison_memory_region((p), (n))
#else
#define CCACHE_ASAN_POISON(p, n) ((void)(p), (void)(n))
#define CCACHE_ASAN_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

// --- TSan: the kernel serializes rseq critical sections that run on the same CPU
// (a section is either finished or aborted before another starts there). TSan
// cannot see that, so each section acquires the per-CPU slot's address before it
// runs and releases it after it commits, exactly the edge the kernel provides.
#if CCACHE_HAVE_TSAN
void __tsan_acquire(void *addr);
void __tsan_release(void *addr);
#define CCACHE_TSAN_ACQUIRE(p) __tsan_acquire((void *)(p))
#define CCACHE_TSAN_RELEASE(p) __tsan_release((void *)(p))
#else
#define CCACHE_TSAN_ACQUIRE(p) ((void)(p))
#define CCACHE_TSAN_RELEASE(p) ((void)(p))
#endif

// --- MSan: memory we hand out from a cache is uninitialized as far as the user is
// concerned, even if our own free-list link was written there. Stores made inside
// inline asm are invisible to MSan: the callers mark what the asm wrote.
#if CCACHE_HAVE_MSAN
void __msan_poison(const volatile void *a, size_t size);
void __msan_unpoison(const volatile void *a, size_t size);
void __msan_copy_shadow(const volatile void *dst, const volatile void *src, size_t size);
long __msan_test_shadow(const volatile void *x, size_t size);  // tests and oracles
#define CCACHE_MSAN_POISON(p, n) __msan_poison((p), (n))
#define CCACHE_MSAN_UNPOISON(p, n) __msan_unpoison((p), (n))
#define CCACHE_MSAN_COPY_SHADOW(dst, src, n) __msan_copy_shadow((dst), (src), (n))
#else
#define CCACHE_MSAN_POISON(p, n) ((void)(p), (void)(n))
#define CCACHE_MSAN_UNPOISON(p, n) ((void)(p), (void)(n))
#define CCACHE_MSAN_COPY_SHADOW(dst, src, n) ((void)(dst), (void)(src), (void)(n))
#endif

// Left out of SanitizerCoverage: code whose loops give a fuzzer no useful feedback and
// whose comparison hooks cost most of its time. A test oracle's own loops (writing and
// checking patterns, comparing with a model: fuzz/ops.c, ~60% of the allocator
// fuzzers' time on 2026-12-03; allocator/conformance.c, 80% of conformance_fuzzer's),
// and the allocator's observers that the fuzzers call after every stream (statistics,
// the heap walk: 40%). Sanitizers still check it; only the feedback is off. Not
// inlined: the coverage pass runs after inlining and would instrument the inlined copy.
#if defined(__clang__)
#define CCACHE_NO_COVERAGE __attribute__((no_sanitize("coverage"), noinline))
#else
#define CCACHE_NO_COVERAGE __attribute__((noinline))
#endif

// Names of the sanitizers in this build, for test logs ("none" when none).
const char *ccache_sanitizer_names(void);

#endif  // CCACHE_SANITIZERS_SANITIZERS_H_
