"""cc_fuzz_test: rules_fuzzing's pattern rebuilt with native rules (offline).

For a target NAME it defines:
  NAME                    the fuzzer: libFuzzer under --config=fuzz, else a plain
                          binary around fuzz/replay_main.c that runs given inputs;
  NAME_run                open-ended fuzzing into a corpus directory:
                            bazel run --config=fuzz //fuzz:NAME_run -- [DIR] [flags]
  NAME_regression_test    in `bazel test //...`: replays corpus/NAME and every saved
                          crash reproducer in reproducers/NAME, under every config.
"""

def cc_fuzz_test(name, srcs, deps = [], local_defines = [], tags = []):
    native.cc_binary(
        name = name,
        srcs = srcs,
        local_defines = local_defines,
        linkopts = select({
            "//fuzz:libfuzzer": ["-fsanitize=fuzzer"],
            "//conditions:default": [],
        }),
        deps = deps + select({
            "//fuzz:libfuzzer": [],
            "//conditions:default": ["//fuzz:replay_main"],
        }),
    )
    inputs = native.glob([
        "corpus/%s/**" % name,
        "reproducers/%s/**" % name,
    ])
    native.sh_test(
        name = name + "_regression_test",
        srcs = ["regression_test.sh"],
        args = [
            "$(location :%s)" % name,
            "fuzz/corpus/" + name,
            "fuzz/reproducers/" + name,
        ],
        data = [":" + name] + inputs,
        tags = tags,
    )
    native.sh_binary(
        name = name + "_run",
        srcs = ["run_fuzzer.sh"],
        args = [
            "$(location :%s)" % name,
            name,
        ],
        data = [":" + name] + inputs + native.glob([name + ".dict", name + ".options"]),
    )
