/* A shared library with nothing in it: preloaded with LD_PRELOAD, it costs a process what
 * preloading any library costs (finding, mapping and relocating one more object), the floor
 * under every allocator's start-up in the preload benchmark. */
int empty_library_marker(void) { return 0; }
