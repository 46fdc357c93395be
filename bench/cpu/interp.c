/* A small stack-machine bytecode interpreter (switch dispatch) running a program that sums the
 * Collatz sequence lengths of start..limit-1; ITERS runs with different ranges. */
#include "common.h"

enum { PUSH, LOAD, STORE, ADD, SUB, MUL, DIV2, AND1, JZ, JMP, LT, HALT };

/* variables: 0 = n, 1 = x, 2 = steps, 3 = total, 4 = limit */
static const int32_t prog[] = {
    /*  0 */ LOAD, 0, LOAD, 4, LT, JZ, 69,        /* while n < limit */
    /*  7 */ LOAD, 0, STORE, 1, PUSH, 0, STORE, 2, /* x = n; steps = 0 */
    /* 15 */ LOAD, 1, PUSH, 1, SUB, JZ, 53,       /* while x != 1 */
    /* 22 */ LOAD, 1, AND1, JZ, 39,               /* odd? */
    /* 27 */ LOAD, 1, PUSH, 3, MUL, PUSH, 1, ADD, STORE, 1, JMP, 44,
    /* 39 */ LOAD, 1, DIV2, STORE, 1,             /* x /= 2 */
    /* 44 */ LOAD, 2, PUSH, 1, ADD, STORE, 2, JMP, 15,
    /* 53 */ LOAD, 3, LOAD, 2, ADD, STORE, 3,     /* total += steps */
    /* 60 */ LOAD, 0, PUSH, 1, ADD, STORE, 0, JMP, 0,
    /* 69 */ HALT,
};

static int32_t run(int32_t start, int32_t limit) {
    int32_t var[8] = {start, 0, 0, 0, limit, 0, 0, 0};
    int32_t stack[16];
    int sp = 0, pc = 0;
    for (;;) {
        switch (prog[pc++]) {
        case PUSH: stack[sp++] = prog[pc++]; break;
        case LOAD: stack[sp++] = var[prog[pc++]]; break;
        case STORE: var[prog[pc++]] = stack[--sp]; break;
        case ADD: sp--; stack[sp - 1] += stack[sp]; break;
        case SUB: sp--; stack[sp - 1] -= stack[sp]; break;
        case MUL: sp--; stack[sp - 1] *= stack[sp]; break;
        case DIV2: stack[sp - 1] >>= 1; break;
        case AND1: stack[sp - 1] &= 1; break;
        case JZ: { int32_t t = prog[pc++]; if (stack[--sp] == 0) pc = t; break; }
        case JMP: pc = prog[pc]; break;
        case LT: sp--; stack[sp - 1] = stack[sp - 1] < stack[sp]; break;
        case HALT: return var[3];
        default: put_str("interp: bad opcode\n"); exit(1);
        }
    }
}

int main(void) {
    uint64_t sum = 0;
    for (int it = 0; it < ITERS; it++) sum = sum * 7 + (uint32_t)run(1 + it % 5, 200 + it % 7);
    if (run(1, 10) != 0 + 1 + 7 + 2 + 5 + 8 + 16 + 3 + 19) { put_str("interp self-check failed\n"); return 1; }
    return finish("interp", sum);
}
