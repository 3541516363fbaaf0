/* run.c: sandbox a command with a memory and a time limit; print the verdict and the usage.
 *   cc run.c $(pkg-config --cflags --libs sandbox) -o run && ./run sh -c 'echo hi'        */
#include <stdio.h>

#include "sandbox.h"

int main(int argc, char **argv) {
    const char *fallback[] = {"sh", "-c", "echo hello from the sandbox; id -u"};
    const char *const *args = argc > 1 ? (const char *const *)(argv + 1) : fallback;
    size_t nargs = argc > 1 ? (size_t)(argc - 1) : 3;
    sbx_config *cfg = NULL;
    sbx_run_result *res = NULL;
    if (sbx_config_new(&cfg) != SBX_OK || sbx_config_set_argv(cfg, args, nargs) != SBX_OK ||
        sbx_config_set_num(cfg, "memory", 256.0 * 1024 * 1024) != SBX_OK ||
        sbx_config_set_num(cfg, "timeout", 10) != SBX_OK ||
        /* Run even where no delegated cgroup exists; the report says what was not enforced. */
        sbx_config_set_num(cfg, "limits_best_effort", 1) != SBX_OK ||
        sbx_run(cfg, NULL, 0, &res) != SBX_OK) {
        fprintf(stderr, "sandbox: %s\n", sbx_last_error_message());
        sbx_config_free(cfg);
        return 125;
    }
    size_t len = 0;
    const uint8_t *out = sbx_result_stdout(res, &len);
    fwrite(out, 1, len, stdout);
    static const char *verdicts[] = {"ok", "exit-nonzero", "signaled", "wall-timeout",
                                     "cpu-timeout", "memory-limit", "output-limit", "setup-error"};
    printf("verdict %s, exit %d, signal %d, wall %.3f s, cpu %.3f s, peak %llu bytes, memory limit %s\n",
           verdicts[sbx_result_verdict(res)], sbx_result_exit_code(res), sbx_result_signal(res),
           sbx_result_wall_time(res), sbx_result_cpu_time(res),
           (unsigned long long)sbx_result_memory_peak(res),
           sbx_result_feature_status(res, "limit.memory") == 0 ? "enforced" : "not enforced here");
    int code = sbx_result_exit_code(res);
    sbx_result_free(res);
    sbx_config_free(cfg);
    return code < 0 ? 128 : code;
}
