/*
 * sandbox.h: the C interface of rsandbox (libsandbox.so).
 *
 * Ownership. Every object comes from a constructor (sbx_config_new, sbx_config_from_json,
 * sbx_spawn, sbx_run, sbx_child_wait, sbx_pool_new, sbx_pool_run, sbx_pool_spawn) and is
 * released by its _free function; passing NULL to a _free function does nothing. Strings
 * returned through a `char **out` belong to the caller and are released with sbx_string_free.
 * Pointers returned directly (sbx_result_stdout, sbx_result_stderr,
 * sbx_result_report_json, sbx_result_json, sbx_last_error_message, sbx_version) are borrowed:
 * valid until the owning object is freed (or, for the last error, until the next call on the
 * same thread); never free them. No function consumes its arguments. A function that fails
 * leaves NULL in its `*out`, so freeing it afterwards is always safe.
 *
 * Threads. sbx_spawn and sbx_run are safe to call from many threads at once, in programs with
 * any number of threads: the library allocates everything before it clones, and the sandbox
 * side makes only raw system calls until it executes the command. A configuration may be read
 * (spawned from) by several threads at once but not modified while that happens. Results are
 * immutable. A child handle is used by one thread at a time.
 *
 * Signals. The library changes no signal disposition of the host. Its writes to a sandbox's
 * pipes (input fed to the command, which may stop reading) block SIGPIPE in the calling thread
 * for the write and take the one it raised, so a host keeping SIGPIPE's default action is not
 * ended by it. A host ignoring SIGCHLD still gets every result.
 *
 * Errors. Every fallible function returns an sbx_result; SBX_OK is 0 and the other codes are
 * explicitly numbered and never renumbered. After a failure, sbx_last_error_message() (this
 * thread's) names the step, the path and the errno, and sbx_last_error_errno() gives the errno.
 * A panic inside the library never crosses this interface: it becomes SBX_ERR_PANIC. A setter
 * refuses a value that would turn a configuration a start takes into one it refuses (a
 * relative cwd, an empty hostname, a variable name with '='): the error comes where its cause
 * is.
 *
 * Strings are UTF-8 and NUL-terminated. Invalid UTF-8 is refused (SBX_ERR_INVALID_UTF8); it is
 * never coerced. A setter that refuses its value (for any reason) leaves the object unchanged.
 * Numbers are taken as they are: a setting of whole numbers refuses a fraction or a value out of
 * its range (SBX_ERR_INVALID_SPEC) instead of rounding it.
 */

#ifndef RSANDBOX_SANDBOX_H
#define RSANDBOX_SANDBOX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 Result codes. Explicitly numbered; a number, once given, is never reused or changed.
 */
typedef enum {
  SBX_OK = 0,
  /*
   A required pointer argument is NULL.
   */
  SBX_ERR_NULL = 1,
  /*
   A string argument is not valid UTF-8.
   */
  SBX_ERR_INVALID_UTF8 = 2,
  /*
   A value the configuration cannot take, or a call's argument out of its range (the
   message names which).
   */
  SBX_ERR_INVALID_SPEC = 3,
  /*
   A host path the configuration names does not exist.
   */
  SBX_ERR_PATH_NOT_FOUND = 4,
  /*
   A uid or gid the sandbox would run as cannot be mapped from this user.
   */
  SBX_ERR_UNMAPPABLE_ID = 5,
  /*
   The command is not found in the sandbox.
   */
  SBX_ERR_EXECUTABLE_NOT_FOUND = 6,
  /*
   The command exists but cannot be executed (permissions, format, missing interpreter).
   */
  SBX_ERR_NOT_EXECUTABLE = 7,
  /*
   A step of building the sandbox failed (the message names the step, path and errno).
   */
  SBX_ERR_SETUP = 8,
  /*
   The host lacks something required (user namespaces, cgroup delegation, a kernel
   feature); the message gives the remedy.
   */
  SBX_ERR_UNSUPPORTED = 9,
  /*
   A system call in the calling process failed (pipes, descriptors, processes).
   */
  SBX_ERR_IO = 10,
  /*
   An OCI image is malformed or unsupported.
   */
  SBX_ERR_INVALID_IMAGE = 11,
  /*
   A bug in the library, caught at this interface.
   */
  SBX_ERR_PANIC = 12,
  /*
   A wait ended before the sandbox did (it runs on).
   */
  SBX_ERR_TIMEOUT = 13,
  /*
   Anything else (the message says what).
   */
  SBX_ERR_OTHER = 14,
} sbx_result;

/*
 The one-word outcome of a run. Explicitly numbered.
 */
typedef enum {
  SBX_VERDICT_OK = 0,
  SBX_VERDICT_EXIT_NONZERO = 1,
  SBX_VERDICT_SIGNALED = 2,
  SBX_VERDICT_WALL_TIMEOUT = 3,
  SBX_VERDICT_CPU_TIMEOUT = 4,
  SBX_VERDICT_MEMORY_LIMIT = 5,
  SBX_VERDICT_OUTPUT_LIMIT = 6,
  SBX_VERDICT_SETUP_ERROR = 7,
} sbx_verdict;

/*
 A running sandbox.
 */
typedef struct sbx_child sbx_child;

/*
 A sandbox configuration (a `Spec`). Not to be mutated from two threads at once.
 */
typedef struct sbx_config sbx_config;

/*
 Sandboxes of one configuration started ahead of their jobs (see `sbx_pool_new`). May be used
 from several threads at once.
 */
typedef struct sbx_pool sbx_pool;

/*
 The result of a finished sandbox. Immutable; may be read from any thread.
 */
typedef struct sbx_run_result sbx_run_result;

#ifdef __cplusplus
extern "C" {
#endif // __cplusplus

/*
 The library version, a static NUL-terminated string (never free it).
 */
const char *sbx_version(void);

/*
 The message of the last failed call on this thread ("" when none). Valid until the next call
 on this thread; never free it.
 */
const char *sbx_last_error_message(void);

/*
 The errno behind the last failed call on this thread (0 when none).
 */
int sbx_last_error_errno(void);

/*
 Creates a configuration with every default (all namespaces, the read-only host view, the
 default seccomp profile, Landlock, no capabilities). Free it with `sbx_config_free`.
 */
sbx_result sbx_config_new(sbx_config **out);

/*
 Creates a configuration from a JSON spec (the format of `rsandbox run --print-spec`).
 */
sbx_result sbx_config_from_json(const char *json, sbx_config **out);

/*
 The configuration as JSON, in `*out`; free it with `sbx_string_free`.
 */
sbx_result sbx_config_to_json(const sbx_config *cfg, char **out);

/*
 Frees a string returned by this library. NULL is a no-op.
 */
void sbx_string_free(char *s);

/*
 Frees a configuration. NULL is a no-op.
 */
void sbx_config_free(sbx_config *cfg);

/*
 Sets the command: `argc` strings from `argv` (argv[0] is looked up in the sandbox's PATH).
 */
sbx_result sbx_config_set_argv(sbx_config *cfg, const char *const *argv, uintptr_t argc);

/*
 Sets an environment variable of the command.
 */
sbx_result sbx_config_set_env(sbx_config *cfg, const char *key, const char *value);

/*
 Sets a string-valued setting: "cwd", "hostname", "cgroup_parent", "seccomp" ("default",
 "none", or a profile path), "keep_capability", "rootfs", "rootfs_rw", "network" ("none",
 "host"), "overlay_lower" (adds a lower layer, top-most first), "upper" (persistent upper
 directory), "overlay_driver" ("auto", "kernel", "fuse"), "image" (OCI layout directory),
 "image_tag", "image_store", "stdin"/"stdout"/"stderr" ("inherit", "null", "pipe", or a file
 path), "landlock_rw"/"landlock_ro" (extra Landlock rules), "id_mapping" ("single",
 "subordinate-range"). Every other field of the spec is reachable through sbx_config_from_json.
 */
sbx_result sbx_config_set_str(sbx_config *cfg, const char *name, const char *value);

/*
 Sets a number-valued setting: "uid", "gid", "timeout" (seconds), "output_limit" (bytes kept of
 each of stdout and stderr when sbx_run captures them: the rest is read and dropped and the
 result says which stream was cut; the command is not stopped for it, so pair it with a
 timeout; 0 keeps nothing), "memory",
 "memory_swap", "pids", "cpus", "cpu_weight", "cpu_time", "limits_best_effort" (0/1),
 "allow_nested_userns" (0/1), "mask_proc" (0/1), "landlock" (0 off, 1 best-effort, 2 required),
 "template" (0/1: copy the default tree from this process's template from the second sandbox
 on), "die_with_parent" (0/1), "upper_size" (ephemeral upper cap; 0: the default), "stdin_fd"/"stdout_fd"/
 "stderr_fd" (a descriptor of the caller), "namespace.NAME" (0/1 for user, mount, pid, ipc,
 uts, net, cgroup, time).
 */
sbx_result sbx_config_set_num(sbx_config *cfg,
                              const char *name,
                              double value);

/*
 Adds a bind mount of host path `source` at sandbox path `destination`.
 */
sbx_result sbx_config_add_bind(sbx_config *cfg,
                               const char *source,
                               const char *destination,
                               bool readonly);

/*
 Adds a tmpfs at `destination`, capped at `size` bytes (0: the kernel's default).
 */
sbx_result sbx_config_add_tmpfs(sbx_config *cfg, const char *destination, uint64_t size);

/*
 Runs the configured command to completion, feeding it `input` (may be NULL), capturing its
 output. On success `*out` holds a result to free with `sbx_result_free`.
 */
sbx_result sbx_run(const sbx_config *cfg,
                   const uint8_t *input,
                   uintptr_t input_len,
                   sbx_run_result **out);

/*
 Starts the configured command; returns once it has been executed in the sandbox. The
 command's standard streams follow the configuration (inherited by default).
 */
sbx_result sbx_spawn(const sbx_config *cfg, sbx_child **out);

/*
 Starts a pool of `size` sandboxes (1 to 1024) of `cfg` (its argv is ignored: jobs bring theirs), started
 ahead of their jobs. Each job runs in a sandbox of its own that served no job before, with
 the protections of a cold start; a job costs about one execve. The first sandbox starts
 before this returns (so a configuration that cannot work fails here), the others in a
 background thread that keeps the pool full. Free it with `sbx_pool_free`.
 */
sbx_result sbx_pool_new(const sbx_config *cfg,
                        uintptr_t size,
                        sbx_pool **out);

/*
 Runs the process of `job` (its argv, environment, working directory and streams) in a pooled
 sandbox, within the job's timeout if its config sets one (else the pool's), feeding it `input`
 (may be NULL) and capturing its output, like `sbx_run`. Every other setting is the pool's: a
 job config that sets one is refused (`SBX_ERR_INVALID_SPEC`, naming it). The result's report
 has a "pool" entry.
 */
sbx_result sbx_pool_run(const sbx_pool *pool,
                        const sbx_config *job,
                        const uint8_t *input,
                        uintptr_t input_len,
                        sbx_run_result **out);

/*
 Starts the process of `job` in a pooled sandbox, like `sbx_spawn`; `job` as for
 `sbx_pool_run`.
 */
sbx_result sbx_pool_spawn(const sbx_pool *pool, const sbx_config *job, sbx_child **out);

/*
 How many sandboxes of the pool are ready now (0 for NULL).
 */
uintptr_t sbx_pool_ready(const sbx_pool *pool);

/*
 Frees a pool: its sandboxes still waiting for a job are killed and reaped. NULL is a no-op.
 */
void sbx_pool_free(sbx_pool *pool);

/*
 The host pid of the sandbox's init (-1 for NULL).
 */
int sbx_child_pid(const sbx_child *child);

/*
 Waits for the sandbox, at most `timeout_ms` milliseconds (negative: without limit). Returns
 SBX_ERR_TIMEOUT when it is still running. The child handle stays valid (free it afterwards).
 */
sbx_result sbx_child_wait(sbx_child *child, int64_t timeout_ms, sbx_run_result **out);

/*
 Sends `signal` (1 to SIGRTMAX, or 0 to check the sandbox is there) to every process of the
 sandbox; a number that is no signal is SBX_ERR_INVALID_SPEC. SIGKILL ends the sandbox: its
 init kills and reaps every process, so that their CPU time and memory are in the result (the
 kernel does it after a second if the init has not). After the sandbox has ended: SBX_OK.
 */
sbx_result sbx_child_kill(sbx_child *child, int signal);

/*
 A pidfd of the sandbox's init (readable when it exits; owned by the handle), or -1.
 */
int sbx_child_pidfd(const sbx_child *child);

/*
 A descriptor for an event loop: it becomes readable (poll(2)) when sbx_child_wait with a zero
 timeout has something to do, which it then does. That is when the result is there, and,
 where the configuration sets "timeout" or "cpu_time", when a limit is due to be checked (at
 the deadline; every 20 ms for CPU time, with a cgroup): so a wait that returns
 SBX_ERR_TIMEOUT after a wake-up is expected, and the limits hold for a caller that only polls
 this. Owned by the handle; -1 for NULL.
 */
int sbx_child_result_fd(const sbx_child *child);

/*
 The caller's end of the command's stdin (0), stdout (1) or stderr (2) when that stream is a
 pipe, else -1. Owned by the handle: do not close it (shutdown(2)/read(2)/write(2) are fine).
 */
int sbx_child_stream_fd(const sbx_child *child, int stream);

/*
 Freezes (frozen = true) or thaws every process of the sandbox (needs its cgroup).
 */
sbx_result sbx_child_freeze(sbx_child *child, bool frozen);

/*
 Frees a child handle; a sandbox still running is killed and reaped, unless its configuration
 set "die_with_parent" to 0: then it runs on as a child of this process, which reaps its init
 (sbx_child_pid) with waitpid(pid, &status, __WALL). NULL is a no-op.
 */
void sbx_child_free(sbx_child *child);

/*
 The exit code, or -1 when a signal ended the command (or for NULL).
 */
int sbx_result_exit_code(const sbx_run_result *r);

/*
 The signal that ended the command, or 0.
 */
int sbx_result_signal(const sbx_run_result *r);

/*
 The verdict (SBX_VERDICT_SETUP_ERROR for NULL).
 */
sbx_verdict sbx_result_verdict(const sbx_run_result *r);

/*
 Wall-clock seconds from spawn to exit.
 */
double sbx_result_wall_time(const sbx_run_result *r);

/*
 CPU seconds (user + system) of the whole sandbox.
 */
double sbx_result_cpu_time(const sbx_run_result *r);

/*
 Peak memory in bytes (see the JSON's memory_peak_source for how it was measured).
 */
uint64_t sbx_result_memory_peak(const sbx_run_result *r);

/*
 Processes the OOM killer ended.
 */
uint64_t sbx_result_oom_kills(const sbx_run_result *r);

/*
 Whether the wall-clock limit killed the sandbox.
 */
bool sbx_result_timed_out(const sbx_run_result *r);

/*
 Captured stdout (borrowed until sbx_result_free; NULL when not captured), its length in `*len`.
 */
const uint8_t *sbx_result_stdout(const sbx_run_result *r, uintptr_t *len);

/*
 Captured stderr, as for sbx_result_stdout.
 */
const uint8_t *sbx_result_stderr(const sbx_run_result *r, uintptr_t *len);

/*
 Whether stdout (stream 1) or stderr (stream 2) was cut at the output limit.
 */
bool sbx_result_truncated(const sbx_run_result *r, int stream);

/*
 The enforcement report as JSON (borrowed until sbx_result_free).
 */
const char *sbx_result_report_json(const sbx_run_result *r);

/*
 Status of one protection in the report: 0 enforced, 1 skipped, 2 off, -1 unknown name.
 */
int sbx_result_feature_status(const sbx_run_result *r, const char *name);

/*
 The whole result (status, verdict, usage, report) as JSON (borrowed until sbx_result_free).
 */
const char *sbx_result_json(const sbx_run_result *r);

/*
 Frees a result. NULL is a no-op.
 */
void sbx_result_free(sbx_run_result *r);

/*
 What this host and user can use, as JSON in `*out` (free with sbx_string_free).
 */
sbx_result sbx_doctor_json(char **out);

#ifdef __cplusplus
}  // extern "C"
#endif  // __cplusplus

#endif  /* RSANDBOX_SANDBOX_H */
