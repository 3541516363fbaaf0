/* C tests of libsandbox: every call, every error path. Exit status 0 when all checks pass; the
 * last line is "N passed, M failed". */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sandbox.h"

static int passed, failed;

#define CHECK(cond)                                                                  \
    do {                                                                             \
        if (cond) {                                                                  \
            passed++;                                                                \
        } else {                                                                     \
            failed++;                                                                \
            fprintf(stderr, "FAIL %s:%d: %s (last error: %s)\n", __FILE__, __LINE__, \
                    #cond, sbx_last_error_message());                                \
        }                                                                            \
    } while (0)

static sbx_config *config_for(const char *script) {
    sbx_config *cfg = NULL;
    const char *argv[] = {"/bin/sh", "-c", script};
    CHECK(sbx_config_new(&cfg) == SBX_OK);
    CHECK(sbx_config_set_argv(cfg, argv, 3) == SBX_OK);
    return cfg;
}

static void test_run_captures_output_and_status(void) {
    sbx_config *cfg = config_for("echo hello; cat; echo err >&2; exit 3");
    sbx_run_result *res = NULL;
    const char *input = "from stdin\n";
    CHECK(sbx_run(cfg, (const uint8_t *)input, strlen(input), &res) == SBX_OK);
    if (res == NULL) {
        sbx_config_free(cfg);
        return;
    }
    size_t len = 0;
    const uint8_t *out = sbx_result_stdout(res, &len);
    CHECK(len == strlen("hello\nfrom stdin\n") && memcmp(out, "hello\nfrom stdin\n", len) == 0);
    out = sbx_result_stderr(res, &len);
    CHECK(len == 4 && memcmp(out, "err\n", 4) == 0);
    CHECK(sbx_result_exit_code(res) == 3);
    CHECK(sbx_result_signal(res) == 0);
    CHECK(sbx_result_verdict(res) == SBX_VERDICT_EXIT_NONZERO);
    CHECK(sbx_result_wall_time(res) > 0.0);
    CHECK(sbx_result_feature_status(res, "seccomp") == 0);
    CHECK(sbx_result_feature_status(res, "namespace.pid") == 0);
    CHECK(sbx_result_feature_status(res, "no-such-feature") == -1);
    CHECK(strstr(sbx_result_report_json(res), "\"features\"") != NULL);
    CHECK(strstr(sbx_result_json(res), "\"verdict\":\"exit-nonzero\"") != NULL);
    sbx_result_free(res);
    sbx_config_free(cfg);
}

/* The output limit: which stream was cut, and an empty captured stream is a valid (non-NULL)
   address with length 0, where a stream not captured is NULL. */
static void test_output_limit(void) {
    sbx_config *cfg = config_for("echo 123456789");
    CHECK(sbx_config_set_num(cfg, "output_limit", 4) == SBX_OK);
    sbx_run_result *res = NULL;
    CHECK(sbx_run(cfg, NULL, 0, &res) == SBX_OK);
    if (res != NULL) {
        size_t len = 99;
        const uint8_t *out = sbx_result_stdout(res, &len);
        CHECK(len == 4 && out != NULL && memcmp(out, "1234", 4) == 0);
        CHECK(sbx_result_truncated(res, 1));
        CHECK(!sbx_result_truncated(res, 2));
        CHECK(!sbx_result_truncated(res, 0) && !sbx_result_truncated(res, 9));
        CHECK(sbx_result_verdict(res) == SBX_VERDICT_OUTPUT_LIMIT);
        len = 99;
        CHECK(sbx_result_stderr(res, &len) != NULL && len == 0);
        sbx_result_free(res);
    }
    CHECK(sbx_config_set_str(cfg, "stderr", "null") == SBX_OK);
    res = NULL;
    CHECK(sbx_run(cfg, NULL, 0, &res) == SBX_OK);
    if (res != NULL) {
        size_t len = 99;
        CHECK(sbx_result_stderr(res, &len) == NULL && len == 0);
        sbx_result_free(res);
    }
    sbx_config_free(cfg);
}

static void test_settings(void) {
    sbx_config *cfg = config_for("echo $GREETING; hostname; id -u; pwd");
    CHECK(sbx_config_set_env(cfg, "GREETING", "hi") == SBX_OK);
    CHECK(sbx_config_set_str(cfg, "hostname", "c-host") == SBX_OK);
    CHECK(sbx_config_set_num(cfg, "uid", 1234) == SBX_OK);
    CHECK(sbx_config_set_str(cfg, "cwd", "/tmp") == SBX_OK);
    CHECK(sbx_config_add_tmpfs(cfg, "/scratch", 1 << 20) == SBX_OK);
    CHECK(sbx_config_add_bind(cfg, "/etc", "/hostetc", true) == SBX_OK);
    CHECK(sbx_config_set_num(cfg, "timeout", 10) == SBX_OK);
    sbx_run_result *res = NULL;
    CHECK(sbx_run(cfg, NULL, 0, &res) == SBX_OK);
    size_t len = 0;
    const char *out = (const char *)sbx_result_stdout(res, &len);
    CHECK(len == strlen("hi\nc-host\n1234\n/tmp\n") && memcmp(out, "hi\nc-host\n1234\n/tmp\n", len) == 0);
    sbx_result_free(res);

    char *json = NULL;
    CHECK(sbx_config_to_json(cfg, &json) == SBX_OK);
    sbx_config *copy = NULL;
    CHECK(sbx_config_from_json(json, &copy) == SBX_OK);
    char *json2 = NULL;
    CHECK(sbx_config_to_json(copy, &json2) == SBX_OK);
    CHECK(strcmp(json, json2) == 0);
    sbx_string_free(json);
    sbx_string_free(json2);
    sbx_config_free(copy);
    sbx_config_free(cfg);
}

static void test_spawn_wait_kill(void) {
    sbx_config *cfg = config_for("sleep 30");
    sbx_child *child = NULL;
    CHECK(sbx_spawn(cfg, &child) == SBX_OK);
    CHECK(sbx_child_pid(child) > 0);
    sbx_run_result *res = NULL;
    CHECK(sbx_child_wait(child, 50, &res) == SBX_ERR_TIMEOUT);
    CHECK(res == NULL);
    /* Not a signal: refused as such (the sandbox runs on). */
    CHECK(sbx_child_kill(child, 9999) == SBX_ERR_INVALID_SPEC);
    CHECK(strstr(sbx_last_error_message(), "signal") != NULL);
    CHECK(sbx_child_kill(child, -1) == SBX_ERR_INVALID_SPEC);
    CHECK(sbx_child_wait(child, 50, &res) == SBX_ERR_TIMEOUT);
    CHECK(sbx_child_kill(child, SIGKILL) == SBX_OK);
    CHECK(sbx_child_wait(child, -1, &res) == SBX_OK);
    CHECK(sbx_result_signal(res) == SIGKILL);
    CHECK(sbx_result_verdict(res) == SBX_VERDICT_SIGNALED);
    sbx_result_free(res);
    sbx_child_free(child);
    /* Freeing a running child kills it. */
    CHECK(sbx_spawn(cfg, &child) == SBX_OK);
    sbx_child_free(child);
    sbx_config_free(cfg);
}

static void test_pipes_pidfd_and_namespaces(void) {
    sbx_config *cfg = config_for("echo piped; sleep 0.2");
    CHECK(sbx_config_set_str(cfg, "stdout", "pipe") == SBX_OK);
    CHECK(sbx_config_set_num(cfg, "namespace.net", 0) == SBX_OK);
    CHECK(sbx_config_set_str(cfg, "network", "host") == SBX_OK);
    CHECK(sbx_config_set_num(cfg, "namespace.bogus", 1) == SBX_ERR_INVALID_SPEC);
    sbx_child *child = NULL;
    CHECK(sbx_spawn(cfg, &child) == SBX_OK);
    if (child != NULL) {
        int fd = sbx_child_stream_fd(child, 1);
        CHECK(fd >= 0);
        CHECK(sbx_child_stream_fd(child, 0) == -1);
        char buf[16] = {0};
        CHECK(fd >= 0 && read(fd, buf, sizeof buf - 1) == 6 && strcmp(buf, "piped\n") == 0);
        struct pollfd p = {.fd = sbx_child_pidfd(child), .events = POLLIN};
        CHECK(p.fd >= 0 && poll(&p, 1, 10000) == 1);
        /* Freeze needs the sandbox's own cgroup: OK with one, a clear refusal without. */
        sbx_result f = sbx_child_freeze(child, true);
        CHECK(f == SBX_OK || f == SBX_ERR_UNSUPPORTED || f == SBX_ERR_IO);
        sbx_run_result *res = NULL;
        CHECK(sbx_child_wait(child, -1, &res) == SBX_OK);
        CHECK(sbx_result_feature_status(res, "namespace.net") == 2);
        sbx_result_free(res);
    }
    sbx_child_free(child);
    sbx_config_free(cfg);
}

/* Without a time limit, the result descriptor turns readable exactly when a zero-timeout wait has
   the result: not while the command sleeps, and at its exit (without waiting for the sandbox's
   teardown). */
static void test_result_fd(void) {
    sbx_config *cfg = config_for("sleep 0.3; exit 4");
    sbx_child *child = NULL;
    CHECK(sbx_spawn(cfg, &child) == SBX_OK);
    if (child != NULL) {
        struct pollfd p = {.fd = sbx_child_result_fd(child), .events = POLLIN};
        CHECK(p.fd >= 0);
        CHECK(poll(&p, 1, 0) == 0);
        sbx_run_result *res = NULL;
        CHECK(sbx_child_wait(child, 0, &res) == SBX_ERR_TIMEOUT);
        CHECK(poll(&p, 1, 10000) == 1);
        CHECK(sbx_child_wait(child, 0, &res) == SBX_OK);
        CHECK(res != NULL && sbx_result_exit_code(res) == 4);
        sbx_result_free(res);
    }
    CHECK(sbx_child_result_fd(NULL) == -1);
    sbx_child_free(child);
    sbx_config_free(cfg);

    /* With a wall-clock limit, an event loop that only polls the descriptor and waits with a
     * zero timeout still has the limit enforced: the descriptor wakes at the deadline. */
    cfg = config_for("sleep 5; exit 0");
    CHECK(sbx_config_set_num(cfg, "timeout", 0.3) == SBX_OK);
    child = NULL;
    CHECK(sbx_spawn(cfg, &child) == SBX_OK);
    if (child != NULL) {
        sbx_run_result *res = NULL;
        int wakes = 0;
        while (res == NULL && wakes < 50) {
            struct pollfd p = {.fd = sbx_child_result_fd(child), .events = POLLIN};
            if (poll(&p, 1, 10000) != 1)
                break;
            wakes++;
            if (sbx_child_wait(child, 0, &res) != SBX_OK)
                CHECK(res == NULL);
        }
        /* The deadline, then the result: a few wake-ups, not a busy loop. */
        CHECK(res != NULL && wakes <= 5);
        CHECK(res != NULL && sbx_result_verdict(res) == SBX_VERDICT_WALL_TIMEOUT);
        CHECK(res != NULL && sbx_result_signal(res) == SIGKILL);
        CHECK(res != NULL && sbx_result_wall_time(res) < 3.0);
        sbx_result_free(res);
    }
    sbx_child_free(child);
    sbx_config_free(cfg);
}

static void test_timeout_verdict(void) {
    sbx_config *cfg = config_for("sleep 30");
    CHECK(sbx_config_set_num(cfg, "timeout", 0.3) == SBX_OK);
    sbx_run_result *res = NULL;
    CHECK(sbx_run(cfg, NULL, 0, &res) == SBX_OK);
    CHECK(sbx_result_verdict(res) == SBX_VERDICT_WALL_TIMEOUT);
    CHECK(sbx_result_timed_out(res));
    sbx_result_free(res);
    sbx_config_free(cfg);
}

/* Killed at its time limit, the run still counts what it spent: the CPU time of its processes
 * (two spinning for 1 s) and the peak memory of dd's 64 MiB buffer. Without a memory
 * cgroup these come from the processes' own accounting, which a SIGKILL of the sandbox's init
 * used to lose. */
static void test_timeout_keeps_usage(void) {
    sbx_config *cfg = config_for(
        "sh -c 'while :; do :; done' & "
        "dd if=/dev/zero of=/dev/null bs=64M count=1 2>/dev/null; while :; do :; done");
    CHECK(sbx_config_set_num(cfg, "timeout", 1.0) == SBX_OK);
    sbx_run_result *res = NULL;
    CHECK(sbx_run(cfg, NULL, 0, &res) == SBX_OK);
    if (res != NULL) {
        CHECK(sbx_result_verdict(res) == SBX_VERDICT_WALL_TIMEOUT);
        CHECK(sbx_result_signal(res) == SIGKILL);
        CHECK(sbx_result_cpu_time(res) > 0.2);
        CHECK(sbx_result_memory_peak(res) >= 64u << 20);
        sbx_result_free(res);
    }
    sbx_config_free(cfg);
}

/* Input the command never reads must not kill the host: a C program keeps SIGPIPE's default
 * action, which ends the process at a write to a pipe nobody reads. */
static void test_unread_input_is_no_sigpipe(void) {
    static uint8_t input[1 << 20];
    memset(input, 'x', sizeof input);
    sbx_config *cfg = config_for("exit 0");
    for (int i = 0; i < 20; i++) {
        sbx_run_result *res = NULL;
        CHECK(sbx_run(cfg, input, i % 2 ? sizeof input : 2, &res) == SBX_OK);
        CHECK(res != NULL && sbx_result_exit_code(res) == 0);
        sbx_result_free(res);
    }
    sbx_pool *pool = NULL;
    CHECK(sbx_pool_new(cfg, 1, &pool) == SBX_OK);
    for (int i = 0; pool != NULL && i < 5; i++) {
        sbx_run_result *res = NULL;
        CHECK(sbx_pool_run(pool, cfg, input, sizeof input, &res) == SBX_OK);
        CHECK(res != NULL && sbx_result_exit_code(res) == 0);
        sbx_result_free(res);
    }
    sbx_pool_free(pool);
    sbx_config_free(cfg);
    /* And SIGPIPE is as the host had it: default, unblocked, nothing left pending. */
    struct sigaction now;
    CHECK(sigaction(SIGPIPE, NULL, &now) == 0 && now.sa_handler == SIG_DFL);
    sigset_t mask, pending;
    CHECK(pthread_sigmask(SIG_BLOCK, NULL, &mask) == 0 && !sigismember(&mask, SIGPIPE));
    CHECK(sigpending(&pending) == 0 && !sigismember(&pending, SIGPIPE));
}

/* The library called from a thread's exit (a pthread key's destructor cleaning up a per-thread
 * context), when the thread's own storage may be gone: results, never an abort. */
static int tls_codes[3];
static void tls_destructor(void *cfg) {
    tls_codes[0] = sbx_config_set_num(cfg, "timeout", 2.0);
    tls_codes[1] = sbx_config_set_num(cfg, "timeout", -1.0);
    tls_codes[2] = sbx_last_error_message() != NULL;
    sbx_config_free(cfg);
}
static void *tls_thread(void *key) {
    sbx_config *cfg = NULL;
    /* The library's own per-thread state exists before the key's value is set. */
    sbx_config_set_num(NULL, "timeout", 1.0);
    if (sbx_config_new(&cfg) == SBX_OK)
        pthread_setspecific(*(pthread_key_t *)key, cfg);
    return NULL;
}
static void test_calls_at_thread_exit(void) {
    pthread_key_t key;
    CHECK(pthread_key_create(&key, tls_destructor) == 0);
    pthread_t t;
    CHECK(pthread_create(&t, NULL, tls_thread, &key) == 0);
    CHECK(pthread_join(t, NULL) == 0);
    CHECK(tls_codes[0] == SBX_OK);
    CHECK(tls_codes[1] == SBX_ERR_INVALID_SPEC);
    CHECK(tls_codes[2] == 1);
    pthread_key_delete(key);
}

static void test_errors(void) {
    sbx_config *cfg = NULL;
    sbx_run_result *res = NULL;
    /* NULL everywhere. */
    CHECK(sbx_config_new(NULL) == SBX_ERR_NULL);
    CHECK(sbx_config_set_argv(NULL, NULL, 0) == SBX_ERR_NULL);
    CHECK(sbx_run(NULL, NULL, 0, &res) == SBX_ERR_NULL);
    CHECK(sbx_config_from_json(NULL, &cfg) == SBX_ERR_NULL);
    CHECK(strstr(sbx_last_error_message(), "NULL") != NULL);
    CHECK(sbx_child_pid(NULL) == -1);
    CHECK(sbx_result_exit_code(NULL) == -1);
    /* _free(NULL) is a no-op. */
    sbx_config_free(NULL);
    sbx_result_free(NULL);
    sbx_child_free(NULL);
    sbx_string_free(NULL);

    /* Invalid UTF-8 is refused and changes nothing. */
    cfg = config_for("echo ok");
    CHECK(sbx_config_set_str(cfg, "hostname", "\xff\xfe") == SBX_ERR_INVALID_UTF8);
    const char *bad[] = {"echo", "\xc3\x28"};
    CHECK(sbx_config_set_argv(cfg, bad, 2) == SBX_ERR_INVALID_UTF8);
    char *json = NULL;
    CHECK(sbx_config_to_json(cfg, &json) == SBX_OK);
    CHECK(json != NULL && strstr(json, "\"echo ok\"") != NULL && strstr(json, "\"rsandbox\"") != NULL);
    sbx_string_free(json);

    /* Bad values: each its own code and a message naming the cause (all refused before clone). */
    CHECK(sbx_config_set_argv(cfg, NULL, 0) == SBX_OK);
    CHECK(sbx_run(cfg, NULL, 0, &res) == SBX_ERR_INVALID_SPEC);
    CHECK(strstr(sbx_last_error_message(), "argv is empty") != NULL);
    CHECK(sbx_config_set_num(cfg, "timeout", -1) == SBX_ERR_INVALID_SPEC);
    CHECK(sbx_config_set_num(cfg, "no_such_setting", 1) == SBX_ERR_INVALID_SPEC);
    CHECK(sbx_config_set_str(cfg, "network", "sideways") == SBX_ERR_INVALID_SPEC);
    CHECK(sbx_config_set_str(cfg, "id_mapping", "sideways") == SBX_ERR_INVALID_SPEC);
    CHECK(sbx_config_set_str(cfg, "id_mapping", "subordinate-range") == SBX_OK);
    CHECK(sbx_config_set_str(cfg, "landlock_rw", "/srv") == SBX_OK);
    CHECK(sbx_config_set_str(cfg, "image_tag", "v1") == SBX_ERR_INVALID_SPEC);
    char *js = NULL;
    CHECK(sbx_config_to_json(cfg, &js) == SBX_OK);
    CHECK(js != NULL && strstr(js, "subordinate-range") != NULL && strstr(js, "/srv") != NULL);
    sbx_string_free(js);
    sbx_config_free(cfg);

    CHECK(sbx_config_from_json("{\"process\": {\"argz\": []}}", &cfg) == SBX_ERR_INVALID_SPEC);
    CHECK(strstr(sbx_last_error_message(), "argz") != NULL);
    /* A failure leaves NULL in *out, whatever was there. */
    cfg = (sbx_config *)&passed;
    CHECK(sbx_config_from_json("[", &cfg) == SBX_ERR_INVALID_SPEC);
    CHECK(cfg == NULL);

    /* Numbers are never rounded or wrapped into something else; a refused one changes nothing.
     * Control: in-range values of each kind are taken. */
    cfg = config_for("true");
    CHECK(sbx_config_set_num(cfg, "uid", 4294967296.0) == SBX_ERR_INVALID_SPEC);
    CHECK(sbx_config_set_num(cfg, "gid", 5.5) == SBX_ERR_INVALID_SPEC);
    CHECK(sbx_config_set_num(cfg, "stdin_fd", 3e9) == SBX_ERR_INVALID_SPEC);
    CHECK(sbx_config_set_num(cfg, "namespace.pid", 0.5) == SBX_ERR_INVALID_SPEC);
    CHECK(sbx_config_set_num(cfg, "landlock", 7) == SBX_ERR_INVALID_SPEC);
    CHECK(sbx_config_set_num(cfg, "memory", 1e30) == SBX_ERR_INVALID_SPEC);
    CHECK(sbx_config_to_json(cfg, &js) == SBX_OK);
    CHECK(js != NULL && strstr(js, "\"uid\": null") != NULL && strstr(js, "\"pid\": \"required\"") != NULL);
    sbx_string_free(js);
    CHECK(sbx_config_set_num(cfg, "uid", 1000) == SBX_OK);
    CHECK(sbx_config_set_num(cfg, "namespace.ipc", 0) == SBX_OK);
    CHECK(sbx_config_set_num(cfg, "landlock", 2) == SBX_OK);
    CHECK(sbx_config_to_json(cfg, &js) == SBX_OK);
    CHECK(js != NULL && strstr(js, "\"uid\": 1000") != NULL && strstr(js, "\"ipc\": \"off\"") != NULL);
    sbx_string_free(js);
    /* A refused string setting leaves the root as it was. */
    CHECK(sbx_config_set_str(cfg, "rootfs", "/srv/root") == SBX_OK);
    CHECK(sbx_config_set_str(cfg, "image_tag", "v1") == SBX_ERR_INVALID_SPEC);
    CHECK(sbx_config_set_str(cfg, "overlay_driver", "bogus") == SBX_ERR_INVALID_SPEC);
    CHECK(sbx_config_to_json(cfg, &js) == SBX_OK);
    CHECK(js != NULL && strstr(js, "/srv/root") != NULL && strstr(js, "overlay") == NULL);
    sbx_string_free(js);
    /* Limits out of their range are refused by the setter itself, naming the field, and leave
     * the configuration as it was. */
    CHECK(sbx_config_set_num(cfg, "timeout", 1e20) == SBX_ERR_INVALID_SPEC);
    CHECK(strstr(sbx_last_error_message(), "timeout") != NULL);
    CHECK(sbx_config_set_num(cfg, "cpu_weight", 4294967295.0) == SBX_ERR_INVALID_SPEC);
    CHECK(strstr(sbx_last_error_message(), "cpu_weight") != NULL);
    CHECK(sbx_config_set_num(cfg, "pids", 0) == SBX_ERR_INVALID_SPEC);
    CHECK(sbx_config_set_num(cfg, "cpus", 0) == SBX_ERR_INVALID_SPEC);
    CHECK(sbx_config_to_json(cfg, &js) == SBX_OK);
    CHECK(js != NULL && strstr(js, "\"timeout\": null") != NULL && strstr(js, "\"cpu_weight\": null") != NULL);
    sbx_string_free(js);
    /* Control: values in range. */
    CHECK(sbx_config_set_num(cfg, "cpu_weight", 100) == SBX_OK);
    CHECK(sbx_config_set_num(cfg, "timeout", 30) == SBX_OK);

    /* A count past the array's end meets its NULL entry: refused, never a count-sized
     * allocation; an input length no buffer can have is refused before anything is read. */
    const char *two[] = {"true", NULL};
    CHECK(sbx_config_set_argv(cfg, two, (size_t)1 << 40) == SBX_ERR_NULL);
    CHECK(sbx_config_set_argv(cfg, two, SIZE_MAX) == SBX_ERR_NULL);
    CHECK(strstr(sbx_last_error_message(), "argv[1]") != NULL);
    CHECK(sbx_run(cfg, (const uint8_t *)"x", SIZE_MAX, &res) == SBX_ERR_INVALID_SPEC && res == NULL);
    CHECK(strstr(sbx_last_error_message(), "input_len") != NULL);
    sbx_config_free(cfg);

    /* Values a start would refuse are refused by the setter, naming the field, and change
     * nothing; control: valid ones are taken. */
    cfg = config_for("true");
    CHECK(sbx_config_set_env(cfg, "A=B", "1") == SBX_ERR_INVALID_SPEC);
    CHECK(sbx_config_set_env(cfg, "", "1") == SBX_ERR_INVALID_SPEC);
    CHECK(sbx_config_set_str(cfg, "cwd", "relative") == SBX_ERR_INVALID_SPEC);
    CHECK(strstr(sbx_last_error_message(), "cwd") != NULL);
    CHECK(sbx_config_set_str(cfg, "hostname", "") == SBX_ERR_INVALID_SPEC);
    CHECK(sbx_config_set_str(cfg, "seccomp", "") == SBX_ERR_INVALID_SPEC);
    CHECK(sbx_config_add_tmpfs(cfg, "relative", 0) == SBX_ERR_INVALID_SPEC);
    const char *empty_name[] = {""};
    CHECK(sbx_config_set_argv(cfg, empty_name, 1) == SBX_ERR_INVALID_SPEC);
    CHECK(sbx_config_to_json(cfg, &js) == SBX_OK);
    CHECK(js != NULL && strstr(js, "A=B") == NULL && strstr(js, "relative") == NULL &&
          strstr(js, "\"true\"") != NULL);
    sbx_string_free(js);
    CHECK(sbx_config_set_env(cfg, "A", "B=C") == SBX_OK);
    CHECK(sbx_config_set_str(cfg, "cwd", "/tmp") == SBX_OK);
    CHECK(sbx_config_set_str(cfg, "hostname", "h") == SBX_OK);
    /* A number that would contradict what is set: the hostname needs the UTS namespace. */
    CHECK(sbx_config_set_num(cfg, "namespace.uts", 0) == SBX_ERR_INVALID_SPEC);
    CHECK(strstr(sbx_last_error_message(), "hostname") != NULL);
    CHECK(sbx_config_add_tmpfs(cfg, "/scratch", 0) == SBX_OK);
    sbx_config_free(cfg);

    CHECK(strlen(sbx_version()) > 0);
}

/* Errors that surface only once the sandbox is being built; doctor (which forks probes). */
static void test_errors_spawn(void) {
    char *doctor = NULL;
    CHECK(sbx_doctor_json(&doctor) == SBX_OK);
    CHECK(doctor != NULL && strstr(doctor, "\"checks\"") != NULL);
    sbx_string_free(doctor);
    sbx_run_result *res = NULL;
    sbx_config *cfg = config_for("true");
    const char *missing[] = {"no-such-command-rsbx"};
    CHECK(sbx_config_set_argv(cfg, missing, 1) == SBX_OK);
    CHECK(sbx_run(cfg, NULL, 0, &res) == SBX_ERR_EXECUTABLE_NOT_FOUND);
    CHECK(strstr(sbx_last_error_message(), "no-such-command-rsbx") != NULL);
    CHECK(sbx_last_error_errno() == 2);
    /* Refused by the setter (a relative host path), and refused by a start when it comes in a
     * JSON configuration. */
    CHECK(sbx_config_add_bind(cfg, "relative/path", "/x", true) == SBX_ERR_INVALID_SPEC);
    CHECK(strstr(sbx_last_error_message(), "relative/path") != NULL);
    sbx_config_free(cfg);
    CHECK(sbx_config_from_json("{\"process\": {\"args\": [\"true\"]}, \"filesystem\": "
                               "{\"mounts\": [{\"type\": \"bind\", \"source\": "
                               "\"relative/path\", \"destination\": \"/x\"}]}}",
                               &cfg) == SBX_OK);
    CHECK(sbx_run(cfg, NULL, 0, &res) == SBX_ERR_INVALID_SPEC);
    CHECK(res == NULL);
    sbx_config_free(cfg);

    /* A host refusal carries its errno: the kernel's refusal of a lower with mounts below it
     * (locked inside a user namespace; real root can take it). */
    if (geteuid() != 0) {
        cfg = config_for("true");
        CHECK(sbx_config_set_str(cfg, "overlay_lower", "/") == SBX_OK);
        CHECK(sbx_config_set_str(cfg, "overlay_driver", "kernel") == SBX_OK);
        CHECK(sbx_run(cfg, NULL, 0, &res) == SBX_ERR_UNSUPPORTED);
        CHECK(strstr(sbx_last_error_message(), "mounts below it") != NULL);
        CHECK(sbx_last_error_errno() == EINVAL);
        CHECK(res == NULL);
        sbx_config_free(cfg);
    }
    /* The fuse driver where /dev/fuse is closed to this user
     * and fuse-overlayfs is installed (the error's cause is then the device's open). */
    int fuse = open("/dev/fuse", O_RDWR | O_CLOEXEC);
    int fuse_errno = errno;
    if (fuse >= 0) {
        close(fuse);
        fprintf(stderr, "  (/dev/fuse is open to this user: no refusal to check)\n");
    } else if (access("/usr/bin/fuse-overlayfs", X_OK) != 0) {
        fprintf(stderr, "  (fuse-overlayfs is not installed: no device refusal to check)\n");
    } else {
        cfg = config_for("true");
        CHECK(sbx_config_set_str(cfg, "overlay_lower", "/usr") == SBX_OK);
        CHECK(sbx_config_set_str(cfg, "overlay_driver", "fuse") == SBX_OK);
        CHECK(sbx_run(cfg, NULL, 0, &res) == SBX_ERR_UNSUPPORTED);
        CHECK(strstr(sbx_last_error_message(), "/dev/fuse") != NULL);
        CHECK(sbx_last_error_errno() == fuse_errno);
        CHECK(res == NULL);
        sbx_config_free(cfg);
    }
}

static void test_pool(void) {
    sbx_config *cfg = NULL;
    CHECK(sbx_config_new(&cfg) == SBX_OK);
    CHECK(sbx_config_set_str(cfg, "hostname", "c-pool") == SBX_OK);
    sbx_pool *pool = NULL;
    CHECK(sbx_pool_new(cfg, 2, &pool) == SBX_OK);
    sbx_config_free(cfg);
    if (pool == NULL)
        return;
    for (int i = 0; i < 5; i++) {
        sbx_config *job = config_for("cat; hostname; echo $$; exit 4");
        sbx_run_result *res = NULL;
        CHECK(sbx_pool_run(pool, job, (const uint8_t *)"in\n", 3, &res) == SBX_OK);
        if (res != NULL) {
            size_t len = 0;
            const uint8_t *out = sbx_result_stdout(res, &len);
            /* The pool's hostname, and the command is pid 2 of a fresh PID namespace each time. */
            CHECK(len == strlen("in\nc-pool\n2\n") && memcmp(out, "in\nc-pool\n2\n", len) == 0);
            CHECK(sbx_result_exit_code(res) == 4);
            CHECK(sbx_result_feature_status(res, "pool") >= 0);
            sbx_result_free(res);
        }
        sbx_config_free(job);
    }
    sbx_config *missing = NULL;
    const char *argv[] = {"no-such-command-rsbx"};
    CHECK(sbx_config_new(&missing) == SBX_OK);
    CHECK(sbx_config_set_argv(missing, argv, 1) == SBX_OK);
    sbx_run_result *res = NULL;
    CHECK(sbx_pool_run(pool, missing, NULL, 0, &res) == SBX_ERR_EXECUTABLE_NOT_FOUND && res == NULL);
    sbx_child *child = NULL;
    sbx_config *job = config_for("exit 9");
    CHECK(sbx_pool_spawn(pool, job, &child) == SBX_OK);
    if (child != NULL) {
        CHECK(sbx_child_wait(child, -1, &res) == SBX_OK);
        CHECK(res != NULL && sbx_result_exit_code(res) == 9);
        sbx_result_free(res);
        sbx_child_free(child);
    }
    sbx_config_free(job);
    sbx_config_free(missing);
    /* A job's own timeout is kept; a job config setting what is the pool's is refused by name. */
    job = config_for("sleep 5");
    CHECK(sbx_config_set_num(job, "timeout", 0.3) == SBX_OK);
    CHECK(sbx_pool_run(pool, job, NULL, 0, &res) == SBX_OK);
    CHECK(res != NULL && sbx_result_verdict(res) == SBX_VERDICT_WALL_TIMEOUT);
    sbx_result_free(res);
    res = NULL;
    CHECK(sbx_config_set_str(job, "hostname", "job-host") == SBX_OK);
    CHECK(sbx_pool_run(pool, job, NULL, 0, &res) == SBX_ERR_INVALID_SPEC && res == NULL);
    CHECK(strstr(sbx_last_error_message(), "hostname") != NULL);
    CHECK(sbx_pool_spawn(pool, job, &child) == SBX_ERR_INVALID_SPEC && child == NULL);
    sbx_config_free(job);
    job = NULL;
    CHECK(sbx_pool_run(NULL, job, NULL, 0, &res) == SBX_ERR_NULL);
    CHECK(sbx_pool_ready(NULL) == 0);
    sbx_pool_free(pool);
    sbx_pool_free(NULL);
}

/* A host ignoring SIGCHLD (the kernel then reaps its children as they exit) still gets every
 * result, including that of a sandbox killed at its time limit. */
static void test_host_ignoring_sigchld(void) {
    struct sigaction ignore, old;
    memset(&ignore, 0, sizeof ignore);
    ignore.sa_handler = SIG_IGN;
    CHECK(sigaction(SIGCHLD, &ignore, &old) == 0);
    for (int i = 0; i < 2; i++) {
        sbx_config *cfg = config_for("sh -c 'exit 5'; exit $?");
        sbx_run_result *res = NULL;
        CHECK(sbx_run(cfg, NULL, 0, &res) == SBX_OK);
        CHECK(res != NULL && sbx_result_exit_code(res) == 5);
        sbx_result_free(res);
        sbx_config_free(cfg);

        cfg = config_for("sleep 30");
        CHECK(sbx_config_set_num(cfg, "timeout", 0.3) == SBX_OK);
        res = NULL;
        CHECK(sbx_run(cfg, NULL, 0, &res) == SBX_OK);
        CHECK(res != NULL && sbx_result_verdict(res) == SBX_VERDICT_WALL_TIMEOUT);
        CHECK(res != NULL && sbx_result_signal(res) == SIGKILL);
        sbx_result_free(res);
        sbx_config_free(cfg);
    }
    CHECK(sigaction(SIGCHLD, &old, NULL) == 0);
}

int main(void) {
    /* Under valgrind nothing can be spawned (it emulates neither clone3 with namespace flags nor
     * seccomp): SBX_TEST_NO_SPAWN=1 keeps to the calls that build, convert and refuse. */
    if (getenv("SBX_TEST_NO_SPAWN") == NULL) {
        test_run_captures_output_and_status();
        test_output_limit();
        test_settings();
        test_spawn_wait_kill();
        test_timeout_verdict();
        test_pipes_pidfd_and_namespaces();
        test_result_fd();
        test_errors_spawn();
        test_pool();
        test_host_ignoring_sigchld();
        test_timeout_keeps_usage();
        test_unread_input_is_no_sigpipe();
    }
    test_calls_at_thread_exit();
    test_errors();
    printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
