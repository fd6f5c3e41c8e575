/*
 * multitool: one wasm program, many behaviours, chosen by its arguments, so that most Krustlet
 * tests need no new C. Commands run left to right; each takes a fixed number of operands:
 *
 *   hello                  print "Hello from WebAssembly!" (also what no arguments do)
 *   print TEXT             print TEXT and a newline to stdout
 *   eprint TEXT            print TEXT and a newline to stderr
 *   args                   print argv, one "argv[i]=..." line each, and stop (the rest of
 *                          argv is data, not commands)
 *   env                    print the whole environment, one NAME=value a line
 *   getenv NAME            print NAME=value, or NAME is unset
 *   pwd                    print the working directory
 *   cat PATH               copy a file to stdout
 *   ls PATH                list a directory, one sorted name a line (hidden names skipped, as ls)
 *   write PATH TEXT        create or truncate PATH and write TEXT and a newline
 *   append PATH TEXT       append TEXT and a newline to PATH
 *   fill PATH KIB          write KIB kibibytes of 'x' to PATH
 *   rm PATH                remove a file
 *   mkdir PATH             create a directory
 *   rmdir PATH             remove an empty directory
 *   symlink TARGET PATH    create the symlink PATH -> TARGET
 *   rename FROM TO         rename FROM to TO (replacing TO as rename(2) does)
 *   flip DIR COUNT SECONDS in DIR, swap the name "sub" between the directory "sub.dir" and the
 *                          symlink "sub.link" (both made beforehand) as fast as possible, COUNT
 *                          times or for SECONDS, whichever ends first; a directory someone else
 *                          made at "sub" meanwhile (and its "inner") is removed; then print
 *                          "flipped N"
 *   sleep SECONDS          sleep (fractions allowed)
 *   spin SECONDS           busy-loop without yielding (0: forever)
 *   tick COUNT MILLIS      print "tick N" every MILLIS ms, COUNT times (0: forever)
 *   lines COUNT            print COUNT numbered lines as fast as possible
 *   alloc MB               allocate and touch MB mebibytes, then print "allocated MB MiB"
 *   grow PAGES             memory.grow by PAGES 64-KiB pages at once, print the result
 *   recurse                recurse without bound (stack overflow trap)
 *   trap                   execute an unreachable instruction
 *   exit CODE              exit with CODE
 *   catin                  copy stdin to stdout until end of file
 *   readline               read one line of stdin and print "read: LINE"
 *   isatty                 print "isatty stdin=N stdout=N" (1 for a terminal)
 *
 * A failing command prints "multitool: <command>: <reason>" to stderr and exits 1.
 */
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static void fail(const char *cmd, const char *what) {
    fprintf(stderr, "multitool: %s: %s: %s\n", cmd, what, strerror(errno));
    exit(1);
}

static void need(int i, int n, int argc, const char *cmd) {
    if (i + n >= argc) {
        fprintf(stderr, "multitool: %s: needs %d operand(s)\n", cmd, n);
        exit(2);
    }
}

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_seconds(double s) {
    struct timespec ts;
    ts.tv_sec = (time_t)s;
    ts.tv_nsec = (long)((s - (double)ts.tv_sec) * 1e9);
    nanosleep(&ts, NULL);
}

static int cmp_names(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void write_file(const char *cmd, const char *path, const char *mode, const char *text) {
    FILE *f = fopen(path, mode);
    if (!f) fail(cmd, path);
    if (fprintf(f, "%s\n", text) < 0 || fclose(f) != 0) fail(cmd, path);
}

/* Everything `alloc` allocated. */
static void *volatile kept;

/* Keeps the recursion from being turned into a loop. */
static volatile int depth_sink;
static int recurse(int depth) {
    volatile char frame[256];
    frame[depth % 256] = (char)depth;
    depth_sink = frame[depth % 256];
    /* The frame is read after the call, so every level keeps its own. */
    int below = recurse(depth + 1);
    return below + frame[depth % 256];
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 2) {
        printf("Hello from WebAssembly!\n");
        return 0;
    }
    for (int i = 1; i < argc; i++) {
        const char *cmd = argv[i];
        if (!strcmp(cmd, "hello")) {
            printf("Hello from WebAssembly!\n");
        } else if (!strcmp(cmd, "print")) {
            need(i, 1, argc, cmd);
            printf("%s\n", argv[++i]);
        } else if (!strcmp(cmd, "eprint")) {
            need(i, 1, argc, cmd);
            fprintf(stderr, "%s\n", argv[++i]);
        } else if (!strcmp(cmd, "args")) {
            for (int a = 0; a < argc; a++) printf("argv[%d]=%s\n", a, argv[a]);
            return 0;
        } else if (!strcmp(cmd, "env")) {
            for (char **e = environ; e && *e; e++) printf("%s\n", *e);
        } else if (!strcmp(cmd, "getenv")) {
            need(i, 1, argc, cmd);
            const char *name = argv[++i];
            const char *v = getenv(name);
            if (v) printf("%s=%s\n", name, v);
            else printf("%s is unset\n", name);
        } else if (!strcmp(cmd, "catin")) {
            char buf[4096];
            size_t n;
            while ((n = fread(buf, 1, sizeof buf, stdin)) > 0) fwrite(buf, 1, n, stdout);
            fflush(stdout);
        } else if (!strcmp(cmd, "readline")) {
            char line[4096];
            if (!fgets(line, sizeof line, stdin)) fail(cmd, "stdin");
            line[strcspn(line, "\r\n")] = 0;
            printf("read: %s\n", line);
        } else if (!strcmp(cmd, "isatty")) {
            printf("isatty stdin=%d stdout=%d\n", isatty(0), isatty(1));
        } else if (!strcmp(cmd, "pwd")) {
            char buf[4096];
            if (!getcwd(buf, sizeof buf)) fail(cmd, "getcwd");
            printf("%s\n", buf);
        } else if (!strcmp(cmd, "cat")) {
            need(i, 1, argc, cmd);
            const char *path = argv[++i];
            FILE *f = fopen(path, "r");
            if (!f) fail(cmd, path);
            char buf[4096];
            size_t n;
            while ((n = fread(buf, 1, sizeof buf, f)) > 0) fwrite(buf, 1, n, stdout);
            fclose(f);
            fflush(stdout);
        } else if (!strcmp(cmd, "ls")) {
            need(i, 1, argc, cmd);
            const char *path = argv[++i];
            DIR *d = opendir(path);
            if (!d) fail(cmd, path);
            char *names[4096];
            int count = 0;
            struct dirent *ent;
            while ((ent = readdir(d)) && count < 4096) {
                if (ent->d_name[0] == '.') continue;
                names[count++] = strdup(ent->d_name);
            }
            closedir(d);
            qsort(names, count, sizeof names[0], cmp_names);
            for (int k = 0; k < count; k++) printf("%s\n", names[k]);
        } else if (!strcmp(cmd, "write") || !strcmp(cmd, "append")) {
            need(i, 2, argc, cmd);
            write_file(cmd, argv[i + 1], cmd[0] == 'w' ? "w" : "a", argv[i + 2]);
            i += 2;
        } else if (!strcmp(cmd, "fill")) {
            need(i, 2, argc, cmd);
            const char *path = argv[++i];
            long kib = atol(argv[++i]);
            FILE *f = fopen(path, "w");
            if (!f) fail(cmd, path);
            char block[1024];
            memset(block, 'x', sizeof block);
            for (long k = 0; k < kib; k++)
                if (fwrite(block, 1, sizeof block, f) != sizeof block) fail(cmd, path);
            if (fclose(f) != 0) fail(cmd, path);
        } else if (!strcmp(cmd, "rm")) {
            need(i, 1, argc, cmd);
            if (unlink(argv[++i]) != 0) fail(cmd, argv[i]);
        } else if (!strcmp(cmd, "mkdir")) {
            need(i, 1, argc, cmd);
            if (mkdir(argv[++i], 0755) != 0) fail(cmd, argv[i]);
        } else if (!strcmp(cmd, "rmdir")) {
            need(i, 1, argc, cmd);
            if (rmdir(argv[++i]) != 0) fail(cmd, argv[i]);
        } else if (!strcmp(cmd, "symlink")) {
            need(i, 2, argc, cmd);
            if (symlink(argv[i + 1], argv[i + 2]) != 0) fail(cmd, argv[i + 2]);
            i += 2;
        } else if (!strcmp(cmd, "rename")) {
            need(i, 2, argc, cmd);
            if (rename(argv[i + 1], argv[i + 2]) != 0) fail(cmd, argv[i + 1]);
            i += 2;
        } else if (!strcmp(cmd, "flip")) {
            need(i, 3, argc, cmd);
            const char *dir = argv[++i];
            long count = atol(argv[++i]);
            double end = now_seconds() + atof(argv[++i]);
            char sub[4096], sub_dir[4096], sub_link[4096], inner[4096];
            snprintf(sub, sizeof sub, "%s/sub", dir);
            snprintf(sub_dir, sizeof sub_dir, "%s/sub.dir", dir);
            snprintf(sub_link, sizeof sub_link, "%s/sub.link", dir);
            snprintf(inner, sizeof inner, "%s/sub/inner", dir);
            long n = 0;
            /* Failures are expected (someone may create "sub" while it is missing); the next
             * round repairs them. */
            for (; n < count && (n % 64 != 0 || now_seconds() < end); n++) {
                if (rename(sub, sub_dir) != 0) {
                    rmdir(inner);
                    rmdir(sub);
                }
                rename(sub_link, sub);
                rename(sub, sub_link);
                rename(sub_dir, sub);
            }
            printf("flipped %ld\n", n);
        } else if (!strcmp(cmd, "sleep")) {
            need(i, 1, argc, cmd);
            sleep_seconds(atof(argv[++i]));
        } else if (!strcmp(cmd, "spin")) {
            need(i, 1, argc, cmd);
            double secs = atof(argv[++i]);
            double end = now_seconds() + secs;
            volatile uint64_t x = 0;
            while (secs == 0 || now_seconds() < end) x++;
        } else if (!strcmp(cmd, "tick")) {
            need(i, 2, argc, cmd);
            long count = atol(argv[i + 1]);
            double interval = atof(argv[i + 2]) / 1000.0;
            i += 2;
            for (long n = 1; count == 0 || n <= count; n++) {
                printf("tick %ld\n", n);
                if (count == 0 || n < count) sleep_seconds(interval);
            }
        } else if (!strcmp(cmd, "lines")) {
            need(i, 1, argc, cmd);
            long count = atol(argv[++i]);
            setvbuf(stdout, NULL, _IOFBF, 1 << 16);
            for (long n = 1; n <= count; n++) printf("line %ld\n", n);
            fflush(stdout);
            setvbuf(stdout, NULL, _IOLBF, 0);
        } else if (!strcmp(cmd, "alloc")) {
            need(i, 1, argc, cmd);
            long mb = atol(argv[++i]);
            for (long m = 0; m < mb; m++) {
                char *p = malloc(1 << 20);
                if (!p) {
                    fprintf(stderr, "multitool: alloc: out of memory after %ld MiB\n", m);
                    exit(1);
                }
                memset(p, (int)m, 1 << 20);
                /* Chained into a global list, so the allocation cannot be optimised away. */
                *(void **)p = kept;
                kept = p;
            }
            printf("allocated %ld MiB\n", mb);
        } else if (!strcmp(cmd, "grow")) {
            need(i, 1, argc, cmd);
            long pages = atol(argv[++i]);
            long r = (long)__builtin_wasm_memory_grow(0, (unsigned long)pages);
            printf("grow %ld -> %ld\n", pages, r);
        } else if (!strcmp(cmd, "recurse")) {
            return recurse(0);
        } else if (!strcmp(cmd, "trap")) {
            __builtin_trap();
        } else if (!strcmp(cmd, "exit")) {
            need(i, 1, argc, cmd);
            fflush(stdout);
            exit(atoi(argv[++i]));
        } else {
            fprintf(stderr, "multitool: unknown command %s\n", cmd);
            return 2;
        }
    }
    return 0;
}
