/* kvm-hello: the smallest VMM on the KVM API for a RISC-V guest (runs inside a virtkit guest whose CPU has
 * the H extension, so the guest's own KVM runs a guest of its own: nested virtualization).
 *
 * usage: kvm-hello PAYLOAD.bin     loads the payload at guest physical 0x80000000, starts one vCPU there in
 * VS-mode, serves its SBI calls that KVM hands to user space (legacy console_putchar), stops at its SBI
 * shutdown; prints how many exits of each kind it saw. Exit status 0 when the guest shut down, 1 otherwise.
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
#define GUEST_SIZE (4UL << 20)
#define SBI_LEGACY_PUTCHAR 1

static void die(const char *what) {
    fprintf(stderr, "kvm-hello: %s: %s\n", what, strerror(errno));
    exit(1);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: kvm-hello PAYLOAD.bin\n");
        return 2;
    }
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
    uint8_t *mem = mmap(NULL, GUEST_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED)
        die("mmap guest memory");
    FILE *f = fopen(argv[1], "rb");
    if (!f)
        die(argv[1]);
    size_t n = fread(mem, 1, GUEST_SIZE, f);
    fclose(f);
    if (n == 0) {
        fprintf(stderr, "kvm-hello: %s is empty\n", argv[1]);
        return 1;
    }
    struct kvm_userspace_memory_region region = {
        .slot = 0, .guest_phys_addr = GUEST_BASE, .memory_size = GUEST_SIZE, .userspace_addr = (uint64_t)mem};
    if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0)
        die("KVM_SET_USER_MEMORY_REGION");
    int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
    if (vcpu < 0)
        die("KVM_CREATE_VCPU");
    int size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    struct kvm_run *run = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    if (run == MAP_FAILED)
        die("mmap kvm_run");
    uint64_t pc = GUEST_BASE;
    struct kvm_one_reg reg = {
        .id = KVM_REG_RISCV | KVM_REG_SIZE_U64 | KVM_REG_RISCV_CORE | KVM_REG_RISCV_CORE_REG(regs.pc),
        .addr = (uint64_t)&pc};
    if (ioctl(vcpu, KVM_SET_ONE_REG, &reg) < 0)
        die("KVM_SET_ONE_REG pc");
    unsigned long exits = 0, sbi = 0;
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
            if (run->riscv_sbi.extension_id == SBI_LEGACY_PUTCHAR) {
                putchar((int)run->riscv_sbi.args[0]);
                fflush(stdout);
                run->riscv_sbi.ret[0] = 0;
                run->riscv_sbi.ret[1] = 0;
            } else {
                run->riscv_sbi.ret[0] = -2; /* SBI_ERR_NOT_SUPPORTED */
                run->riscv_sbi.ret[1] = 0;
            }
            break;
        case KVM_EXIT_SYSTEM_EVENT:
            printf("kvm-hello: the guest shut down after %lu exits to the VMM (%lu SBI calls)\n", exits, sbi);
            return 0;
        default:
            fprintf(stderr, "kvm-hello: unexpected exit %u after %lu exits\n", run->exit_reason, exits);
            return 1;
        }
    }
}
