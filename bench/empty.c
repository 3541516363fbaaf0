/* empty: a static C program that does nothing. Its start-up against nolibc's is what the C
 * library's own initialisation costs on this machine (scripts/bench builds both). */
int main(void)
{
    return 0;
}
