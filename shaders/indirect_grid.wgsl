// The grids of launches sized by a count of live rows, for dispatch_workgroups_indirect: the
// live rows are the non-empty records, which compact_records.wgsl writes first, and each
// launch's grid follows from their count by its rule, as BatchGrid::grid computes on the CPU.
//
// Bindings:
//   0  records  [rows * 6]       f32 records; a score (word 4) that is not >= 0: empty
//   1  rules    array<GridRule>  one per launch
//   2  args     array<u32>       out: x, y, z per launch, what the indirect launches read
//   3  params   GridParams
//
// Grid: one workgroup.

struct GridParams {
    rows: u32,
    rules: u32,
    max_per_dim: u32,
    _pad: u32,
}

// kind 0: z = rows * per_row; 1: x = ceil(rows * per_row / per_group); 2: that many
// workgroups over x and y as grid_2d lays them out. (x, y, z) is the launch's full grid.
struct GridRule {
    kind: u32,
    x: u32,
    y: u32,
    z: u32,
    per_row: u32,
    per_group: u32,
    _pad0: u32,
    _pad1: u32,
}

override WG: u32 = 256u;

@group(0) @binding(0) var<storage, read> records: array<f32>;
@group(0) @binding(1) var<storage, read> rules: array<GridRule>;
@group(0) @binding(2) var<storage, read_write> args: array<u32>;
@group(0) @binding(3) var<uniform> p: GridParams;

var<workgroup> live: atomic<u32>;

// ceil(a * b / c) without overflowing when a * b fits in u32, as the kernels' sizes do.
fn groups(a: u32, b: u32, c: u32) -> u32 {
    let items = a * b;
    let g = max(c, 1u);
    return items / g + u32(items % g != 0u);
}

@compute @workgroup_size(WG)
fn indirect_grid(@builtin(local_invocation_index) lid: u32) {
    // Pipelines are built without zeroing workgroup memory.
    if (lid == 0u) {
        atomicStore(&live, 0u);
    }
    workgroupBarrier();
    var count = 0u;
    for (var r = lid; r < p.rows; r += WG) {
        count += u32(records[r * 6u + 4u] >= 0.0);
    }
    atomicAdd(&live, count);
    workgroupBarrier();
    let rows = atomicLoad(&live);
    for (var i = lid; i < p.rules; i += WG) {
        let rule = rules[i];
        var grid = vec3<u32>(rule.x, rule.y, rule.z);
        switch rule.kind {
            case 0u: {
                grid.z = rows * rule.per_row;
            }
            case 1u: {
                grid.x = groups(rows, rule.per_row, rule.per_group);
            }
            default: {
                let n = groups(rows, rule.per_row, rule.per_group);
                if (n == 0u) {
                    grid = vec3<u32>(0u, 1u, 1u);
                } else if (n <= p.max_per_dim) {
                    grid = vec3<u32>(n, 1u, 1u);
                } else {
                    let y = n / p.max_per_dim + u32(n % p.max_per_dim != 0u);
                    grid = vec3<u32>(n / y + u32(n % y != 0u), y, 1u);
                }
            }
        }
        args[i * 3u] = grid.x;
        args[i * 3u + 1u] = grid.y;
        args[i * 3u + 2u] = grid.z;
    }
}
