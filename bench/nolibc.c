/* nolibc: a static program without a C library that exits at once (built with -nostdlib). */
void _start(void)
{
    __asm__ volatile("mov $60, %eax\n\txor %edi, %edi\n\tsyscall");
}
