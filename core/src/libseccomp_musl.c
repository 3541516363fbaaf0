/*
 * Linking Debian's libseccomp.a (compiled against glibc with _FORTIFY_SOURCE) into a musl
 * executable: the one glibc-only symbol it needs is the checked fprintf, used by the PFC export.
 * musl keeps glibc's ABI for everything else it calls (errno, stdio handles, the stack guard).
 * No headers: this builds with any C compiler, for the musl target, without musl's.
 */
typedef struct opaque_file FILE;
int vfprintf(FILE *stream, const char *format, __builtin_va_list args);

int __fprintf_chk(FILE *stream, int flag, const char *format, ...)
{
    __builtin_va_list args;
    int n;
    (void)flag;
    __builtin_va_start(args, format);
    n = vfprintf(stream, format, args);
    __builtin_va_end(args);
    return n;
}
