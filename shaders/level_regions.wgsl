// Where a pixel of a map of packed pyramid levels lies: the kernels over such maps prepend this
// to their file (it reads the includer's params `p`, declared after it). Their params `p` hold `count` regions in `regions`, each (y0, x0, height,
// width) as a vec4<u32> (WGSL cannot pass a uniform struct of the includer's type).

// The level whose region holds (y, xx); p.count when none does.
fn level_at(y: u32, xx: u32) -> u32 {
    for (var l = 0u; l < p.count; l++) {
        let r = p.regions[l];
        if (y >= r.x && y < r.x + r.z && xx >= r.y && xx < r.y + r.w) {
            return l;
        }
    }
    return p.count;
}
