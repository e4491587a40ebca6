/* What a new 4 KiB file costs in system calls, for each way the slave could create it:
 * 10,000 files in 100 directories (W2's tree), CPU seconds of the process.
 *
 *   gcc -O2 -o /tmp/new-file benches/scripts/new-file.c
 *   for way in proc empty rootfd create; do /tmp/new-file $way $(mktemp -d); done
 *
 * proc:   what the slave did until 2026-11-23: lstat of each ancestor and of the target,
 *         open(dir, O_TMPFILE), write, linkat("/proc/self/fd/N", AT_SYMLINK_FOLLOW)
 * empty:  the same, named with linkat(fd, "", AT_EMPTY_PATH) (the slave now)
 * rootfd: the same as empty, every path relative to a descriptor of the root
 * create: open(path, O_CREAT | O_EXCL), write: what `cp` does, no atomicity
 *
 * Run each way several times, alternating: this machine's disk varies from minute to
 * minute (docs/BENCHMARKS.md). Nothing is deleted: freed inodes slow the next run.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

static double cpu_seconds(void) {
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    return usage.ru_utime.tv_sec + usage.ru_stime.tv_sec +
           (usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6;
}

static void check(int ok, const char *what) {
    if (!ok) {
        perror(what);
        exit(1);
    }
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s proc|empty|rootfd|create EMPTY_DIR\n", argv[0]);
        return 2;
    }
    const char *way = argv[1], *root = argv[2];
    char content[4096], top[4096], dir[4096], path[8192], rel_dir[64], rel_path[96], proc[64];
    struct stat st;
    memset(content, 'x', sizeof content);
    int root_fd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    check(root_fd >= 0, "open root");
    snprintf(top, sizeof top, "%s/w2", root);
    check(mkdir(top, 0755) == 0, "mkdir");
    double start = cpu_seconds();
    for (int d = 0; d < 100; d++) {
        snprintf(dir, sizeof dir, "%s/w2/d%03d", root, d);
        snprintf(rel_dir, sizeof rel_dir, "w2/d%03d", d);
        check(mkdir(dir, 0755) == 0, "mkdir");
        for (int f = 0; f < 100; f++) {
            snprintf(path, sizeof path, "%s/f%04d", dir, f);
            snprintf(rel_path, sizeof rel_path, "%s/f%04d", rel_dir, f);
            int fd;
            if (strcmp(way, "create") == 0) {
                fd = open(path, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0644);
                check(fd >= 0, "open");
                check(write(fd, content, sizeof content) == sizeof content, "write");
            } else if (strcmp(way, "rootfd") == 0) {
                fstatat(root_fd, "w2", &st, AT_SYMLINK_NOFOLLOW);
                fstatat(root_fd, rel_dir, &st, AT_SYMLINK_NOFOLLOW);
                fstatat(root_fd, rel_path, &st, AT_SYMLINK_NOFOLLOW);
                fd = openat(root_fd, rel_dir, O_TMPFILE | O_WRONLY | O_CLOEXEC, 0644);
                check(fd >= 0, "open O_TMPFILE");
                check(write(fd, content, sizeof content) == sizeof content, "write");
                check(linkat(fd, "", root_fd, rel_path, AT_EMPTY_PATH) == 0, "linkat");
            } else {
                lstat(top, &st);
                lstat(dir, &st);
                lstat(path, &st);
                fd = open(dir, O_TMPFILE | O_WRONLY | O_CLOEXEC, 0644);
                check(fd >= 0, "open O_TMPFILE");
                check(write(fd, content, sizeof content) == sizeof content, "write");
                if (strcmp(way, "empty") == 0) {
                    check(linkat(fd, "", AT_FDCWD, path, AT_EMPTY_PATH) == 0, "linkat");
                } else {
                    snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
                    check(linkat(AT_FDCWD, proc, AT_FDCWD, path, AT_SYMLINK_FOLLOW) == 0,
                          "linkat");
                }
            }
            close(fd);
        }
    }
    printf("%-6s %.3f s CPU for 10,000 files\n", way, cpu_seconds() - start);
    return 0;
}
