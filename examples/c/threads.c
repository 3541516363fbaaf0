/* threads.c: 8 threads spawn sandboxes concurrently while the main thread allocates; every
 * result is checked. Exits 0 when all runs gave the expected output. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sandbox.h"

#define THREADS 8
#define RUNS 25

static volatile int stop;

static void *worker(void *arg) {
    long id = (long)arg, bad = 0;
    for (int i = 0; i < RUNS; i++) {
        char script[64];
        snprintf(script, sizeof script, "echo %ld-%d", id, i);
        const char *argv[] = {"/bin/sh", "-c", script};
        sbx_config *cfg = NULL;
        sbx_run_result *res = NULL;
        if (sbx_config_new(&cfg) != SBX_OK || sbx_config_set_argv(cfg, argv, 3) != SBX_OK ||
            sbx_run(cfg, NULL, 0, &res) != SBX_OK) {
            fprintf(stderr, "thread %ld run %d: %s\n", id, i, sbx_last_error_message());
            bad++;
        } else {
            char want[64];
            snprintf(want, sizeof want, "%ld-%d\n", id, i);
            size_t len = 0;
            const uint8_t *out = sbx_result_stdout(res, &len);
            if (len != strlen(want) || memcmp(out, want, len) != 0 || sbx_result_exit_code(res) != 0) bad++;
        }
        sbx_result_free(res);
        sbx_config_free(cfg);
    }
    return (void *)bad;
}

int main(void) {
    pthread_t t[THREADS];
    for (long i = 0; i < THREADS; i++) pthread_create(&t[i], NULL, worker, (void *)i);
    long bad = 0;
    /* The main thread keeps the allocator busy meanwhile. */
    void *keep[64] = {0};
    for (int round = 0; round < 200000; round++) {
        int slot = round % 64;
        free(keep[slot]);
        keep[slot] = malloc(16 + (size_t)(round * 7919) % 65536);
    }
    for (int i = 0; i < 64; i++) free(keep[i]);
    for (int i = 0; i < THREADS; i++) {
        void *r;
        pthread_join(t[i], &r);
        bad += (long)r;
    }
    printf("%d sandboxes from %d threads, %ld bad\n", THREADS * RUNS, THREADS, bad);
    return bad == 0 ? 0 : 1;
}
