// Element positions in either storage layout, for the kernels that take both. Shapes are NCHW;
// `cl` is 0 for NCHW storage and the padded channel count for channels-last ([N][H][W][cl],
// the channels from C up to cl holding zeros). The Rust side prepends this file to the kernels
// that use it.

struct Pos {
    n: u32,
    c: u32,
    y: u32,
    x: u32,
}

// The element at storage index `i` of a tensor of `c` channels and h x w pixels. In
// channels-last storage the channel may be a padding one (c <= pos.c < cl).
fn position(i: u32, c: u32, h: u32, w: u32, cl: u32) -> Pos {
    var pos: Pos;
    if (cl == 0u) {
        pos.x = i % w;
        let r = i / w;
        pos.y = r % h;
        pos.c = (r / h) % c;
        pos.n = r / h / c;
    } else {
        pos.c = i % cl;
        let r = i / cl;
        pos.x = r % w;
        pos.y = (r / w) % h;
        pos.n = r / w / h;
    }
    return pos;
}

// The storage index of `pos` in a tensor of `c` channels and h x w pixels.
fn storage_index(pos: Pos, c: u32, h: u32, w: u32, cl: u32) -> u32 {
    if (cl == 0u) {
        return ((pos.n * c + pos.c) * h + pos.y) * w + pos.x;
    }
    return ((pos.n * h + pos.y) * w + pos.x) * cl + pos.c;
}
