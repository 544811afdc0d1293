/* An empty program: what `spawn` starts, to time a process's start-up alone. */
int main(void) { return 0; }
