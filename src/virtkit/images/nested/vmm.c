/* kvm-hello: a small VMM on the KVM API for RISC-V guests (it runs inside a virtkit guest whose CPU has the
 * H extension, so the guest's own KVM runs a guest of its own: nested virtualization).
 *
 *   kvm-hello PAYLOAD.bin
 *       loads a bare payload at guest physical 0x80000000 and starts one vCPU there in VS-mode;
 *   kvm-hello --kernel Image [--initrd FILE] [--append CMDLINE] [--mem MiB]
 *       boots Linux as QEMU/kvmtool would, with no devices at all: the kernel at 0x80200000, a device tree
 *       (one cpu with its interrupt controller, the memory, /chosen) and the initramfs at the top of RAM;
 *       its console is the SBI's (earlycon=sbi, console=hvc0), which KVM hands to this VMM.
 *
 * Serves the SBI calls KVM hands to user space (legacy console_putchar/getchar), stops at the guest's SBI
 * shutdown or reset and prints how many exits it saw. Exit status 0 when the guest shut down, 1 otherwise.
 */
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#define GUEST_BASE 0x80000000UL
#define KERNEL_OFFSET 0x200000UL
#define SBI_LEGACY_PUTCHAR 1
#define SBI_LEGACY_GETCHAR 2

static void die(const char *what) {
    fprintf(stderr, "kvm-hello: %s: %s\n", what, strerror(errno));
    exit(1);
}

static size_t load(const char *path, uint8_t *dst, size_t room) {
    FILE *f = fopen(path, "rb");
    if (!f)
        die(path);
    size_t n = fread(dst, 1, room, f);
    int more = fgetc(f) != EOF;
    fclose(f);
    if (n == 0 || more) {
        fprintf(stderr, "kvm-hello: %s is empty or does not fit in the guest's memory\n", path);
        exit(1);
    }
    return n;
}

/* ---- a flattened device tree, written front to back (the structure block, then the strings) ---- */
static uint8_t fdt_struct[8192], fdt_strings[1024];
static size_t fdt_slen, fdt_stlen;

static void be32(uint8_t *p, uint32_t v) {
    p[0] = v >> 24;
    p[1] = v >> 16;
    p[2] = v >> 8;
    p[3] = v;
}
static void fdt_word(uint32_t v) {
    be32(fdt_struct + fdt_slen, v);
    fdt_slen += 4;
}
static void fdt_begin(const char *name) {
    fdt_word(1);
    size_t n = strlen(name) + 1;
    memcpy(fdt_struct + fdt_slen, name, n);
    fdt_slen = (fdt_slen + n + 3) & ~3UL;
}
static void fdt_end(void) { fdt_word(2); }
static uint32_t fdt_string(const char *s) {
    for (size_t i = 0; i < fdt_stlen; i += strlen((char *)fdt_strings + i) + 1)
        if (!strcmp((char *)fdt_strings + i, s))
            return i;
    uint32_t off = fdt_stlen;
    memcpy(fdt_strings + fdt_stlen, s, strlen(s) + 1);
    fdt_stlen += strlen(s) + 1;
    return off;
}
static void fdt_prop(const char *name, const void *val, uint32_t len) {
    fdt_word(3);
    fdt_word(len);
    fdt_word(fdt_string(name));
    memcpy(fdt_struct + fdt_slen, val, len);
    fdt_slen = (fdt_slen + len + 3) & ~3UL;
}
static void fdt_str(const char *name, const char *s) { fdt_prop(name, s, strlen(s) + 1); }
static void fdt_u32(const char *name, uint32_t v) {
    uint8_t b[4];
    be32(b, v);
    fdt_prop(name, b, 4);
}
static void fdt_u64s(const char *name, const uint64_t *v, int n) {
    uint8_t b[32];
    for (int i = 0; i < n; i++) {
        be32(b + 8 * i, v[i] >> 32);
        be32(b + 8 * i + 4, (uint32_t)v[i]);
    }
    fdt_prop(name, b, 8 * n);
}
static size_t fdt_finish(uint8_t *out) {
    fdt_word(9); /* FDT_END */
    size_t hdr = 40, rsv = 16, total = hdr + rsv + fdt_slen + fdt_stlen;
    memset(out, 0, hdr + rsv);
    uint32_t h[10] = {0xd00dfeed, total, hdr + rsv, hdr + rsv + fdt_slen, hdr, 17, 16, 0, fdt_stlen, fdt_slen};
    for (int i = 0; i < 10; i++)
        be32(out + 4 * i, h[i]);
    memcpy(out + hdr + rsv, fdt_struct, fdt_slen);
    memcpy(out + hdr + rsv + fdt_slen, fdt_strings, fdt_stlen);
    return total;
}

static void set_reg(int vcpu, uint64_t id, uint64_t value) {
    struct kvm_one_reg reg = {.id = id, .addr = (uint64_t)&value};
    if (ioctl(vcpu, KVM_SET_ONE_REG, &reg) < 0)
        die("KVM_SET_ONE_REG");
}
static uint64_t get_reg(int vcpu, uint64_t id) {
    uint64_t value = 0;
    struct kvm_one_reg reg = {.id = id, .addr = (uint64_t)&value};
    if (ioctl(vcpu, KVM_GET_ONE_REG, &reg) < 0)
        die("KVM_GET_ONE_REG");
    return value;
}
#define CORE(r) (KVM_REG_RISCV | KVM_REG_SIZE_U64 | KVM_REG_RISCV_CORE | KVM_REG_RISCV_CORE_REG(r))
#define TIMER(r) (KVM_REG_RISCV | KVM_REG_SIZE_U64 | KVM_REG_RISCV_TIMER | KVM_REG_RISCV_TIMER_REG(r))

int main(int argc, char **argv) {
    const char *payload = NULL, *kernel = NULL, *initrd = NULL, *append = "console=hvc0 earlycon=sbi";
    unsigned long mib = 64;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--kernel") && i + 1 < argc)
            kernel = argv[++i];
        else if (!strcmp(argv[i], "--initrd") && i + 1 < argc)
            initrd = argv[++i];
        else if (!strcmp(argv[i], "--append") && i + 1 < argc)
            append = argv[++i];
        else if (!strcmp(argv[i], "--mem") && i + 1 < argc)
            mib = strtoul(argv[++i], NULL, 10);
        else if (argv[i][0] != '-' && !payload)
            payload = argv[i];
        else {
            payload = kernel = NULL;
            break;
        }
    }
    if (!payload == !kernel || mib < 16 || mib > 4096) {
        fprintf(stderr, "usage: kvm-hello PAYLOAD.bin | kvm-hello --kernel Image [--initrd FILE] "
                        "[--append CMDLINE] [--mem MiB (16..4096)]\n");
        return 2;
    }
    size_t size = mib << 20;
    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0)
        die("/dev/kvm");
    if (ioctl(kvm, KVM_GET_API_VERSION, 0) != KVM_API_VERSION) {
        fprintf(stderr, "kvm-hello: unexpected KVM API version\n");
        return 1;
    }
    int vm = ioctl(kvm, KVM_CREATE_VM, 0);
    if (vm < 0)
        die("KVM_CREATE_VM");
    uint8_t *mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (mem == MAP_FAILED)
        die("mmap guest memory");
    struct kvm_userspace_memory_region region = {
        .slot = 0, .guest_phys_addr = GUEST_BASE, .memory_size = size, .userspace_addr = (uint64_t)mem};
    if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0)
        die("KVM_SET_USER_MEMORY_REGION");
    int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
    if (vcpu < 0)
        die("KVM_CREATE_VCPU");
    int runsz = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    struct kvm_run *run = mmap(NULL, runsz, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    if (run == MAP_FAILED)
        die("mmap kvm_run");
    if (payload) {
        load(payload, mem, size);
        set_reg(vcpu, CORE(regs.pc), GUEST_BASE);
    } else {
        size_t klen = load(kernel, mem + KERNEL_OFFSET, size / 2);
        uint64_t dtb = GUEST_BASE + size - 0x10000, rd_start = 0, rd_end = 0;
        if (initrd) {
            size_t room = size - 0x10000 - ((KERNEL_OFFSET + klen + 0xFFFFF) & ~0xFFFFFUL);
            uint8_t *tmp = malloc(room);
            if (!tmp)
                die("malloc");
            size_t n = load(initrd, tmp, room);
            rd_start = (dtb - n) & ~0xFFFUL;
            rd_end = rd_start + n;
            memcpy(mem + (rd_start - GUEST_BASE), tmp, n);
            free(tmp);
        }
        uint64_t freq = get_reg(vcpu, TIMER(frequency));
        fdt_begin("");
        fdt_u32("#address-cells", 2);
        fdt_u32("#size-cells", 2);
        fdt_str("compatible", "linux,dummy-virt");
        fdt_str("model", "kvm-hello");
        fdt_begin("chosen");
        fdt_str("bootargs", append);
        if (initrd) {
            fdt_u64s("linux,initrd-start", &rd_start, 1);
            fdt_u64s("linux,initrd-end", &rd_end, 1);
        }
        fdt_end();
        fdt_begin("cpus");
        fdt_u32("#address-cells", 1);
        fdt_u32("#size-cells", 0);
        fdt_u32("timebase-frequency", (uint32_t)freq);
        fdt_begin("cpu@0");
        fdt_str("device_type", "cpu");
        fdt_u32("reg", 0);
        fdt_str("compatible", "riscv");
        fdt_str("riscv,isa", "rv64imafdc");
        fdt_str("mmu-type", "riscv,sv48");
        fdt_str("status", "okay");
        fdt_begin("interrupt-controller");
        fdt_u32("#interrupt-cells", 1);
        fdt_prop("interrupt-controller", "", 0);
        fdt_str("compatible", "riscv,cpu-intc");
        fdt_u32("phandle", 1);
        fdt_end();
        fdt_end();
        fdt_end();
        fdt_begin("memory@80000000");
        fdt_str("device_type", "memory");
        uint64_t reg[2] = {GUEST_BASE, size};
        fdt_u64s("reg", reg, 2);
        fdt_end();
        fdt_end();
        fdt_finish(mem + (dtb - GUEST_BASE));
        set_reg(vcpu, CORE(regs.pc), GUEST_BASE + KERNEL_OFFSET);
        set_reg(vcpu, CORE(regs.a0), 0);
        set_reg(vcpu, CORE(regs.a1), dtb);
    }
    unsigned long exits = 0, sbi = 0, chars = 0;
    for (;;) {
        if (ioctl(vcpu, KVM_RUN, 0) < 0) {
            if (errno == EINTR)
                continue;
            die("KVM_RUN");
        }
        exits++;
        switch (run->exit_reason) {
        case KVM_EXIT_RISCV_SBI:
            sbi++;
            run->riscv_sbi.ret[1] = 0;
            if (run->riscv_sbi.extension_id == SBI_LEGACY_PUTCHAR) {
                putchar((int)run->riscv_sbi.args[0]);
                if (run->riscv_sbi.args[0] == '\n')
                    fflush(stdout);
                chars++;
                run->riscv_sbi.ret[0] = 0;
            } else if (run->riscv_sbi.extension_id == SBI_LEGACY_GETCHAR) {
                run->riscv_sbi.ret[0] = -1; /* nothing typed */
            } else {
                run->riscv_sbi.ret[0] = -2; /* SBI_ERR_NOT_SUPPORTED */
            }
            break;
        case KVM_EXIT_SYSTEM_EVENT:
            fflush(stdout);
            printf("kvm-hello: the guest shut down after %lu exits to the VMM (%lu SBI calls, %lu console "
                   "bytes)\n", exits, sbi, chars);
            return 0;
        default:
            fflush(stdout);
            fprintf(stderr, "kvm-hello: unexpected exit %u after %lu exits\n", run->exit_reason, exits);
            return 1;
        }
    }
}
