//! Which forwarding thread gets an arriving datagram, when the tunnel runs several.
//!
//! Every datagram between two nodes has the same outer addresses and ports, so the kernel's
//! own SO_REUSEPORT hash would send them all to one socket. This classic BPF program,
//! attached to the socket group, hashes the *inner* packet instead (addresses, and ports
//! for TCP/UDP that are not fragments), so that each inner flow always lands on the same
//! thread and reaches the TUN in order, while different flows spread over the threads.

/// The program for a wire format whose inner packet starts `prefix` bytes into the payload
/// and a group of `queues` sockets. Loads past the end make the kernel's BPF return 0 (the
/// first socket): garbage still lands somewhere and is rejected there.
pub fn program(prefix: u32, queues: u32) -> Vec<libc::sock_filter> {
    use libc::{BPF_A, BPF_ABS, BPF_ALU, BPF_B, BPF_H, BPF_IMM, BPF_IND, BPF_JA, BPF_JEQ, BPF_JMP, BPF_JSET, BPF_K, BPF_LD, BPF_LDX, BPF_MISC, BPF_MOD, BPF_MSH, BPF_MUL, BPF_RET, BPF_RSH, BPF_TAX, BPF_W, BPF_X, BPF_XOR};
    let op = |code: u32, jt: u8, jf: u8, k: u32| libc::sock_filter { code: code as u16, jt, jf, k };
    let p = prefix;
    vec![
        op(BPF_LD | BPF_B | BPF_ABS, 0, 0, p + 9),          // 0: A = protocol
        op(BPF_JMP | BPF_JEQ | BPF_K, 1, 0, 6),             // 1: TCP → 3
        op(BPF_JMP | BPF_JEQ | BPF_K, 0, 5, 17),            // 2: not UDP → 8
        op(BPF_LD | BPF_H | BPF_ABS, 0, 0, p + 6),          // 3: A = flags + fragment offset
        op(BPF_JMP | BPF_JSET | BPF_K, 3, 0, 0x1fff),       // 4: a later fragment → 8
        op(BPF_LDX | BPF_B | BPF_MSH, 0, 0, p),             // 5: X = header length
        op(BPF_LD | BPF_W | BPF_IND, 0, 0, p),              // 6: A = both ports
        op(BPF_JMP | BPF_JA, 0, 0, 1),                      // 7: → 9
        op(BPF_LD | BPF_IMM, 0, 0, 0),                      // 8: A = 0 (no ports)
        op(BPF_MISC | BPF_TAX, 0, 0, 0),                    // 9: X = ports
        op(BPF_LD | BPF_W | BPF_ABS, 0, 0, p + 12),         // 10: A = source address
        op(BPF_ALU | BPF_XOR | BPF_X, 0, 0, 0),             // 11
        op(BPF_MISC | BPF_TAX, 0, 0, 0),                    // 12
        op(BPF_LD | BPF_W | BPF_ABS, 0, 0, p + 16),         // 13: A = destination address
        op(BPF_ALU | BPF_XOR | BPF_X, 0, 0, 0),             // 14
        // Fold the high half onto the low one, multiply (Knuth's multiplicative hash) and
        // keep the high half, where every input bit has an effect. The low bits alone would
        // not do: Linux gives outgoing connections ports of one parity.
        op(BPF_MISC | BPF_TAX, 0, 0, 0),                    // 15
        op(BPF_ALU | BPF_RSH | BPF_K, 0, 0, 16),            // 16
        op(BPF_ALU | BPF_XOR | BPF_X, 0, 0, 0),             // 17
        op(BPF_ALU | BPF_MUL | BPF_K, 0, 0, 0x9e37_79b1),   // 18
        op(BPF_ALU | BPF_RSH | BPF_K, 0, 0, 16),            // 19
        op(BPF_ALU | BPF_MOD | BPF_K, 0, 0, queues.max(1)), // 20: socket index
        op(BPF_RET | BPF_A, 0, 0, 0),                       // 21
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small interpreter for the instructions the program uses, with the kernel's rule
    /// that an out-of-range load ends the program with 0.
    fn run(prog: &[libc::sock_filter], pkt: &[u8]) -> u32 {
        let (mut a, mut x, mut pc) = (0u32, 0u32, 0usize);
        let load = |off: usize, n: usize| pkt.get(off..off + n).map(|b| b.iter().fold(0u32, |v, &c| v << 8 | c as u32));
        loop {
            let i = prog[pc];
            let code = i.code as u32;
            pc += 1;
            match code {
                c if c == libc::BPF_LD | libc::BPF_B | libc::BPF_ABS => match load(i.k as usize, 1) { Some(v) => a = v, None => return 0 },
                c if c == libc::BPF_LD | libc::BPF_H | libc::BPF_ABS => match load(i.k as usize, 2) { Some(v) => a = v, None => return 0 },
                c if c == libc::BPF_LD | libc::BPF_W | libc::BPF_ABS => match load(i.k as usize, 4) { Some(v) => a = v, None => return 0 },
                c if c == libc::BPF_LD | libc::BPF_W | libc::BPF_IND => match load((x + i.k) as usize, 4) { Some(v) => a = v, None => return 0 },
                c if c == libc::BPF_LDX | libc::BPF_B | libc::BPF_MSH => match load(i.k as usize, 1) { Some(v) => x = 4 * (v & 0xf), None => return 0 },
                c if c == libc::BPF_LD | libc::BPF_IMM => a = i.k,
                c if c == libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K => pc += if a == i.k { i.jt } else { i.jf } as usize,
                c if c == libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K => pc += if a & i.k != 0 { i.jt } else { i.jf } as usize,
                c if c == libc::BPF_JMP | libc::BPF_JA => pc += i.k as usize,
                c if c == libc::BPF_MISC | libc::BPF_TAX => x = a,
                c if c == libc::BPF_ALU | libc::BPF_XOR | libc::BPF_X => a ^= x,
                c if c == libc::BPF_ALU | libc::BPF_RSH | libc::BPF_K => a >>= i.k,
                c if c == libc::BPF_ALU | libc::BPF_MUL | libc::BPF_K => a = a.wrapping_mul(i.k),
                c if c == libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K => a %= i.k,
                c if c == libc::BPF_RET | libc::BPF_A => return a,
                _ => panic!("unexpected instruction {code:#x}"),
            }
        }
    }

    fn tcp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, frag: u16) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 40, 0, 0, (frag >> 8) as u8, frag as u8, 64, 6, 0, 0];
        p.extend(src);
        p.extend(dst);
        p.extend(sport.to_be_bytes());
        p.extend(dport.to_be_bytes());
        p.extend([0; 16]);
        p
    }

    #[test]
    fn same_flow_same_socket_and_flows_spread() {
        let prog = program(0, 4);
        let a = [172, 16, 0, 2];
        let b = [172, 16, 1, 2];
        let mut seen = std::collections::HashSet::new();
        // Even ports only, as Linux hands them out to connect().
        for port in (40000..40128u16).step_by(2) {
            let q = run(&prog, &tcp(a, b, port, 5201, 0x4000));
            assert!(q < 4);
            // Every packet of the flow (same header, whatever the payload) gets the same index.
            let mut again = tcp(a, b, port, 5201, 0x4000);
            again[30] = 0xff;
            assert_eq!(run(&prog, &again), q);
            seen.insert(q);
        }
        assert_eq!(seen.len(), 4, "64 flows should use all 4 sockets");
        // Two queues: a handful of flows (iperf3 -P 4) does not all land on one.
        let two = program(0, 2);
        let halves: std::collections::HashSet<u32> = (0..4).map(|i| run(&two, &tcp(a, b, 45678 + 2 * i, 5201, 0x4000))).collect();
        assert_eq!(halves.len(), 2);
    }

    #[test]
    fn ports_are_ignored_where_they_are_not_ports() {
        let prog = program(0, 8);
        let (a, b) = ([172, 16, 0, 2], [172, 16, 1, 2]);
        // A later fragment carries payload where the ports would be.
        assert_eq!(run(&prog, &tcp(a, b, 1, 2, 0x0010)), run(&prog, &tcp(a, b, 3, 4, 0x0020)));
        // ICMP: by addresses only.
        let mut icmp = tcp(a, b, 1, 2, 0);
        icmp[9] = 1;
        let mut icmp2 = tcp(a, b, 7, 9, 0);
        icmp2[9] = 1;
        assert_eq!(run(&prog, &icmp), run(&prog, &icmp2));
    }

    #[test]
    fn prefix_shifts_every_offset_and_short_input_goes_to_the_first() {
        let pkt = tcp([10, 0, 0, 1], [10, 0, 0, 2], 1000, 2000, 0);
        let mut framed = vec![0, 0, 8, 0];
        framed.extend(&pkt);
        assert_eq!(run(&program(4, 5), &framed), run(&program(0, 5), &pkt));
        assert_eq!(run(&program(0, 5), &[0x45, 0, 0]), 0);
    }
}
