//! A restricted reader of Python pickles (protocols 2 to 5): enough of Python's pickle machine
//! to read the pickles inside PyTorch checkpoints and detectron2's numpy `.pkl` files, and
//! nothing more.
//!
//! Nothing a file says is ever run. A pickle rebuilds objects by naming Python functions and
//! classes (globals) and calling them; here each global is looked up in an allow-list of the
//! handful a `state_dict` is made of (PyTorch's tensor and storage rebuilders, numpy's array and
//! dtype, `OrderedDict`), whose effect is rebuilt in Rust, and any other is refused by name, as
//! PyTorch's own `weights_only` loader does. Tensor data stays where it is: a PyTorch tensor is
//! a view (offset, shape, strides) into a storage the container holds, a numpy array one into
//! bytes of the pickle.
//!
//! Why not a crate: burn's `pytorch-reader` (0.22) reads `.pth` files without PyTorch, but keeps
//! globals it does not know (`os.system` included) as opaque values instead of refusing them,
//! and reads no numpy arrays, so detectron2's pickles would need this reader anyway; one
//! allow-list for both keeps one place to audit and fuzz.
//!
//! Values live in an arena and refer to one another by index, so an object fetched again from
//! the memo is the same object, as in Python (a dict filled after it was memoized is seen
//! filled), no input can make a copy explode, and nothing walks the graph recursively. Every
//! length is checked against the bytes left, and the objects, stack and memo are bounded, so
//! any input gives a value or an error in time linear in its size.

use std::borrow::Cow;
use std::collections::HashMap;

use safetensors::Dtype;

/// An index into [`Pickle::values`].
pub type Id = usize;

/// The most objects, stack entries or memo entries one pickle may hold. A state_dict needs
/// about 20 per tensor; this leaves room for a hundred thousand tensors.
const MAX_OBJECTS: usize = 1 << 22;

/// The most arguments any allowed call takes (numpy's dtype state has 8 items).
const MAX_ARGS: usize = 8;

/// Objects copied while reading, beyond those the input creates: a pickle may fetch a large
/// memoized tuple or text again and again, which Python would copy each time; past this
/// budget (per input byte) the file is refused rather than read in quadratic time.
const COPIES_PER_BYTE: usize = 16;

/// A global a pickle may name: the types a state_dict is built from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Global {
    /// `collections.OrderedDict`.
    OrderedDict,
    /// `torch._utils._rebuild_tensor` (and `_v2`, `_v3`): a tensor from a storage.
    RebuildTensor,
    /// `torch._utils._rebuild_parameter` (and `_with_state`): an `nn.Parameter`, read as its
    /// tensor.
    RebuildParameter,
    /// `torch.FloatStorage` and the other typed storages, naming the element type.
    StorageType(Dtype),
    /// `torch.float32` and the other dtypes (the argument `_rebuild_tensor_v3` takes).
    TorchDtype(Dtype),
    /// `numpy.core.multiarray._reconstruct`: an empty array, filled by the BUILD after it.
    NumpyReconstruct,
    /// `numpy.ndarray`, the class `_reconstruct` is given.
    NumpyNdarray,
    /// `numpy.dtype`.
    NumpyDtype,
    /// `numpy.core.multiarray.scalar`: a numpy number (metadata, not weights).
    NumpyScalar,
    /// `numpy.core.numeric._frombuffer`: an array from bytes (pickle protocol 5).
    NumpyFromBuffer,
    /// `_codecs.encode`: how protocol 2 writes Python 3 `bytes`, as latin-1 text.
    CodecsEncode,
}

/// Bytes per element of the element types a pickle can name (all whole bytes).
pub fn element_size(dtype: Dtype) -> usize {
    (dtype.bitsize() / 8).max(1)
}

/// Resolves `module.name` against the allow-list.
fn global(module: &str, name: &str) -> Option<Global> {
    use Dtype::*;
    let storage = |name: &str| {
        Some(match name {
            "FloatStorage" => F32,
            "DoubleStorage" => F64,
            "HalfStorage" => F16,
            "BFloat16Storage" => BF16,
            "LongStorage" => I64,
            "IntStorage" => I32,
            "ShortStorage" => I16,
            "CharStorage" => I8,
            "ByteStorage" => U8,
            "BoolStorage" => BOOL,
            _ => return None,
        })
    };
    let dtype = |name: &str| {
        Some(match name {
            "float32" | "float" => F32,
            "float64" | "double" => F64,
            "float16" | "half" => F16,
            "bfloat16" => BF16,
            "int64" | "long" => I64,
            "int32" | "int" => I32,
            "int16" | "short" => I16,
            "int8" => I8,
            "uint8" => U8,
            "bool" => BOOL,
            _ => return None,
        })
    };
    // numpy 2 moved `numpy.core` to `numpy._core`; pickles name either.
    let numpy =
        |m: &str, sub: &str| m == format!("numpy.core.{sub}") || m == format!("numpy._core.{sub}");
    Some(match (module, name) {
        ("collections", "OrderedDict") => Global::OrderedDict,
        ("torch._utils", "_rebuild_tensor" | "_rebuild_tensor_v2" | "_rebuild_tensor_v3") => {
            Global::RebuildTensor
        }
        ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
            Global::RebuildParameter
        }
        ("torch", n) => match (storage(n), dtype(n)) {
            (Some(d), _) => Global::StorageType(d),
            (_, Some(d)) => Global::TorchDtype(d),
            _ => return None,
        },
        ("numpy", "ndarray") => Global::NumpyNdarray,
        ("numpy", "dtype") => Global::NumpyDtype,
        (m, "_reconstruct") if numpy(m, "multiarray") => Global::NumpyReconstruct,
        (m, "scalar") if numpy(m, "multiarray") => Global::NumpyScalar,
        (m, "_frombuffer") if numpy(m, "numeric") => Global::NumpyFromBuffer,
        ("_codecs", "encode") => Global::CodecsEncode,
        _ => return None,
    })
}

/// Where a tensor's elements are.
#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    /// A storage of the checkpoint, by key (`data/<key>` in a zip, the key list of a legacy
    /// file), starting `base` elements in (a legacy storage view).
    Storage {
        /// The storage's key.
        key: String,
        /// Elements before the view's start.
        base: usize,
    },
    /// Bytes of the pickle itself (a numpy array): the [`Value::Bytes`] with this id.
    Inline(Id),
}

/// A tensor: a strided view of elements of one type.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorView {
    /// Where the elements are.
    pub data: Data,
    /// The element type.
    pub dtype: Dtype,
    /// Whether elements are stored big-endian (numpy's `>f4`).
    pub big_endian: bool,
    /// The first element, counted in elements from the start of `data`.
    pub offset: usize,
    /// The dimensions.
    pub shape: Vec<usize>,
    /// Elements between neighbours along each dimension.
    pub strides: Vec<usize>,
}

/// A storage named by a persistent id: `('storage', type, key, location, numel[, view])`.
#[derive(Clone, Debug, PartialEq)]
pub struct StorageRef {
    /// The key its bytes are found by.
    pub key: String,
    /// The element type.
    pub dtype: Dtype,
    /// Elements before the start, for a legacy storage view.
    pub base: usize,
}

/// A numpy dtype: the element type (`None` for one a state_dict cannot hold: strings,
/// objects, complex numbers, ...), its code and its byte order.
#[derive(Clone, Debug, PartialEq)]
pub struct NumpyDtype {
    /// The element type, if it is one a tensor can have.
    pub dtype: Option<Dtype>,
    /// numpy's code, such as `f4`.
    pub code: String,
    /// Big-endian (`>`).
    pub big_endian: bool,
}

/// A rebuilt Python object.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `None`.
    None,
    /// `True` or `False`.
    Bool(bool),
    /// An int of at most 128 bits.
    Int(i128),
    /// An int of more than 128 bits.
    BigInt,
    /// A float.
    Float(f64),
    /// Text.
    Str(String),
    /// Bytes: Python 3 `bytes` and `bytearray`, and Python 2 `str` (text or data).
    Bytes(Vec<u8>),
    /// A tuple.
    Tuple(Vec<Id>),
    /// A list (and a set or frozenset, read as the list of its items).
    List(Vec<Id>),
    /// A dict or `OrderedDict`: its items in order (a later equal key wins, as in Python).
    Dict(Vec<(Id, Id)>),
    /// A global of the allow-list.
    Global(Global),
    /// A storage of the checkpoint.
    Storage(StorageRef),
    /// A tensor or numpy array.
    Tensor(TensorView),
    /// A numpy dtype.
    NumpyDtype(NumpyDtype),
    /// A numpy array made by `_reconstruct`, until its BUILD gives it its contents.
    NumpyPending,
}

/// Why a pickle could not be read.
#[derive(Clone, Debug, PartialEq)]
pub enum PickleError {
    /// It names a global outside the allow-list: `module.name`.
    Refused(String),
    /// It is damaged, or uses a part of pickle no state_dict needs: what was found.
    Malformed(String),
}

type Result<T> = std::result::Result<T, PickleError>;

fn bad<T>(message: impl Into<String>) -> Result<T> {
    Err(PickleError::Malformed(message.into()))
}

/// A pickle read into an arena of values.
#[derive(Debug)]
pub struct Pickle {
    /// Every object, by id.
    pub values: Vec<Value>,
    /// The object the pickle stands for.
    pub root: Id,
}

impl Pickle {
    /// The value `id`.
    pub fn get(&self, id: Id) -> &Value {
        &self.values[id]
    }

    /// The text of a `str`, or of Python 2 `str` bytes (read as latin-1, as
    /// `pickle.load(f, encoding="latin1")` does).
    pub fn text(&self, id: Id) -> Option<Cow<'_, str>> {
        match self.get(id) {
            Value::Str(s) => Some(Cow::Borrowed(s)),
            Value::Bytes(b) => Some(Cow::Owned(b.iter().map(|&c| c as char).collect())),
            _ => None,
        }
    }

    /// The items of a dict, if `id` is one.
    pub fn dict(&self, id: Id) -> Option<&[(Id, Id)]> {
        match self.get(id) {
            Value::Dict(items) => Some(items),
            _ => None,
        }
    }

    /// The value under the text key `key` of the dict `id` (the last, if it repeats).
    pub fn lookup(&self, id: Id, key: &str) -> Option<Id> {
        self.dict(id)?
            .iter()
            .rev()
            .find(|(k, _)| self.text(*k).as_deref() == Some(key))
            .map(|&(_, v)| v)
    }

    /// What a value is, in a few words, for messages: `a str`, `a dict of 3 entries`, ...
    pub fn describe(&self, id: Id) -> String {
        let count =
            |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        match self.get(id) {
            Value::None => "None".into(),
            Value::Bool(_) => "a bool".into(),
            Value::Int(_) | Value::BigInt => "an int".into(),
            Value::Float(_) => "a float".into(),
            Value::Str(_) => "a str".into(),
            Value::Bytes(_) => "bytes".into(),
            Value::Tuple(t) => format!("a tuple of {}", count(t.len(), "item", "items")),
            Value::List(l) => format!("a list of {}", count(l.len(), "item", "items")),
            Value::Dict(items) => {
                let tensors = items
                    .iter()
                    .filter(|(_, v)| matches!(self.get(*v), Value::Tensor(_)))
                    .count();
                format!(
                    "a dict of {}, {tensors} of them tensors",
                    count(items.len(), "entry", "entries"),
                )
            }
            Value::Global(g) => format!("the function or class {g:?}"),
            Value::Storage(_) => "a storage".into(),
            Value::Tensor(_) => "a tensor".into(),
            Value::NumpyDtype(_) => "a numpy dtype".into(),
            Value::NumpyPending => "an unfinished numpy array".into(),
        }
    }
}

/// The bytes being read.
struct Input<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Input<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.bytes.len() - self.pos {
            return bad(format!(
                "ends early: {n} bytes wanted at offset {} of {}",
                self.pos,
                self.bytes.len()
            ));
        }
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn i32(&mut self) -> Result<i32> {
        Ok(i32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A length read as `n`: it must fit in what is left.
    fn length(&mut self, n: u64) -> Result<usize> {
        match usize::try_from(n) {
            Ok(n) if n <= self.bytes.len() - self.pos => Ok(n),
            _ => bad(format!(
                "declares {n} bytes at offset {} where {} are left",
                self.pos,
                self.bytes.len() - self.pos
            )),
        }
    }

    /// A newline-terminated line (GLOBAL's module and name).
    fn line(&mut self) -> Result<&'a str> {
        let rest = &self.bytes[self.pos..];
        let Some(end) = rest.iter().position(|&b| b == b'\n') else {
            return bad("ends inside a GLOBAL's name");
        };
        self.pos += end + 1;
        std::str::from_utf8(&rest[..end])
            .map_err(|_| PickleError::Malformed("names a global that is not UTF-8".into()))
    }
}

/// Whether persistent ids (references to storages outside the pickle) are expected.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Storages {
    /// A PyTorch checkpoint: `('storage', ...)` ids name its storages.
    Allowed,
    /// A plain pickle: a persistent id is an error.
    Refused,
}

/// The machine: an arena, a stack, the marks and the memo.
struct Machine {
    values: Vec<Value>,
    stack: Vec<Id>,
    marks: Vec<usize>,
    memo: HashMap<u32, Id>,
    storages: Storages,
    /// Objects copied so far, and the most allowed.
    copies: std::cell::Cell<usize>,
    max_copies: usize,
}

/// Reads one pickle from the start of `bytes`; returns it and how many bytes it took (the
/// legacy PyTorch format is several pickles in a row).
pub fn parse(bytes: &[u8], storages: Storages) -> Result<(Pickle, usize)> {
    let mut m = Machine {
        values: Vec::new(),
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        storages,
        copies: std::cell::Cell::new(0),
        max_copies: bytes
            .len()
            .saturating_mul(COPIES_PER_BYTE)
            .saturating_add(1 << 20),
    };
    let mut input = Input { bytes, pos: 0 };
    let root = m.run(&mut input)?;
    Ok((
        Pickle {
            values: m.values,
            root,
        },
        input.pos,
    ))
}

/// Little-endian two's complement bytes as an int (LONG1, LONG4).
fn long(bytes: &[u8]) -> Value {
    if bytes.len() > 16 {
        return Value::BigInt;
    }
    let negative = bytes.last().is_some_and(|&b| b & 0x80 != 0);
    let mut buf = [if negative { 0xff } else { 0 }; 16];
    buf[..bytes.len()].copy_from_slice(bytes);
    Value::Int(i128::from_le_bytes(buf))
}

/// Python's latin-1 encoding of text: each character one byte, none above U+00FF.
fn latin1(text: &str) -> Result<Vec<u8>> {
    text.chars()
        .map(|c| u8::try_from(u32::from(c)))
        .collect::<std::result::Result<_, _>>()
        .or_else(|_| bad("encodes bytes as text with characters beyond latin-1"))
}

/// numpy's element type for a type code such as `f4` or `<f4`.
fn numpy_dtype(code: &str) -> NumpyDtype {
    let (order, rest) = match code.as_bytes().first() {
        Some(b'<' | b'>' | b'=' | b'|') => code.split_at(1),
        _ => ("", code),
    };
    use Dtype::*;
    let dtype = match rest {
        "f2" | "e" => Some(F16),
        "f4" | "f" => Some(F32),
        "f8" | "d" => Some(F64),
        "i8" | "q" => Some(I64),
        "i4" | "i" => Some(I32),
        "i2" | "h" => Some(I16),
        "i1" | "b" => Some(I8),
        "u1" | "B" => Some(U8),
        "b1" | "?" => Some(BOOL),
        _ => None,
    };
    NumpyDtype {
        dtype,
        code: rest.to_string(),
        big_endian: order == ">",
    }
}

impl Machine {
    /// Adds an object to the arena.
    fn alloc(&mut self, v: Value) -> Result<Id> {
        if self.values.len() >= MAX_OBJECTS {
            return bad(format!("holds more than {MAX_OBJECTS} objects"));
        }
        self.values.push(v);
        Ok(self.values.len() - 1)
    }

    /// Adds an object to the arena and pushes it.
    fn push_value(&mut self, v: Value) -> Result<Id> {
        let id = self.alloc(v)?;
        self.push(id)?;
        Ok(id)
    }

    fn push(&mut self, id: Id) -> Result<()> {
        if self.stack.len() >= MAX_OBJECTS {
            return bad(format!("stacks more than {MAX_OBJECTS} objects"));
        }
        self.stack.push(id);
        Ok(())
    }

    fn pop(&mut self) -> Result<Id> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return bad("takes an object from an empty stack");
        }
        self.stack
            .pop()
            .ok_or_else(|| PickleError::Malformed("empty stack".into()))
    }

    fn top(&self) -> Result<Id> {
        let floor = self.marks.last().copied().unwrap_or(0);
        match self.stack.last() {
            Some(&id) if self.stack.len() > floor => Ok(id),
            _ => bad("reads the top of an empty stack"),
        }
    }

    /// The objects pushed since the last MARK, which is removed.
    fn pop_mark(&mut self) -> Result<Vec<Id>> {
        let Some(mark) = self.marks.pop() else {
            return bad("collects objects without a MARK");
        };
        if mark > self.stack.len() {
            return bad("collects objects past its MARK");
        }
        Ok(self.stack.split_off(mark))
    }

    fn memo_put(&mut self, index: u32) -> Result<()> {
        let id = self.top()?;
        if self.memo.len() >= MAX_OBJECTS && !self.memo.contains_key(&index) {
            return bad(format!("memoizes more than {MAX_OBJECTS} objects"));
        }
        self.memo.insert(index, id);
        Ok(())
    }

    fn memo_get(&mut self, index: u32) -> Result<()> {
        match self.memo.get(&index) {
            Some(&id) => self.push(id),
            None => bad(format!(
                "fetches memo entry {index}, which was never stored"
            )),
        }
    }

    /// Counts `n` objects copied; an error once the budget is spent.
    fn charge(&self, n: usize) -> Result<()> {
        let total = self.copies.get().saturating_add(n);
        self.copies.set(total);
        if total > self.max_copies {
            return bad("reuses its objects so often that reading it would take quadratic time");
        }
        Ok(())
    }

    fn text(&self, id: Id) -> Result<Option<String>> {
        Ok(match &self.values[id] {
            Value::Str(s) => {
                self.charge(s.len())?;
                Some(s.clone())
            }
            Value::Bytes(b) => {
                self.charge(b.len())?;
                Some(b.iter().map(|&c| c as char).collect())
            }
            _ => None,
        })
    }

    fn int(&self, id: Id, what: &str) -> Result<i128> {
        match self.values[id] {
            Value::Int(i) => Ok(i),
            Value::Bool(b) => Ok(b.into()),
            _ => bad(format!("gives {what} that is not an int")),
        }
    }

    fn size(&self, id: Id, what: &str) -> Result<usize> {
        let i = self.int(id, what)?;
        usize::try_from(i).or_else(|_| bad(format!("gives {what} of {i}")))
    }

    /// The ints of a tuple or list (a shape, strides).
    fn sizes(&self, id: Id, what: &str) -> Result<Vec<usize>> {
        match &self.values[id] {
            Value::Tuple(items) | Value::List(items) => {
                self.charge(items.len())?;
                items.iter().map(|&i| self.size(i, what)).collect()
            }
            _ => bad(format!("gives {what} that is not a tuple")),
        }
    }

    /// The items of a short tuple: a call's arguments, an object's state.
    fn tuple(&self, id: Id, what: &str) -> Result<Vec<Id>> {
        match &self.values[id] {
            Value::Tuple(items) if items.len() <= MAX_ARGS => Ok(items.clone()),
            Value::Tuple(items) => bad(format!("gives {what} {} arguments", items.len())),
            _ => bad(format!("gives {what} arguments that are not a tuple")),
        }
    }

    /// The items of the list or tuple `id`, checked to be (key, value) pairs.
    fn pairs(&self, id: Id) -> Result<Vec<(Id, Id)>> {
        let items = match &self.values[id] {
            Value::List(items) | Value::Tuple(items) => items,
            _ => return bad("builds an OrderedDict from something that is not a list"),
        };
        self.charge(items.len())?;
        items
            .iter()
            .map(|&item| match &self.values[item] {
                Value::Tuple(kv) | Value::List(kv) if kv.len() == 2 => Ok((kv[0], kv[1])),
                _ => bad("builds an OrderedDict from items that are not pairs"),
            })
            .collect()
    }

    fn numpy_dtype_of(&self, id: Id, what: &str) -> Result<NumpyDtype> {
        match &self.values[id] {
            Value::NumpyDtype(d) => Ok(d.clone()),
            _ => bad(format!("gives {what} without a numpy dtype")),
        }
    }

    fn run(&mut self, input: &mut Input) -> Result<Id> {
        loop {
            let op = input.u8()?;
            match op {
                0x80 => {
                    let protocol = input.u8()?;
                    if protocol > 5 {
                        return bad(format!("uses pickle protocol {protocol}; 2 to 5 are read"));
                    }
                }
                // FRAME: a length hint for buffered readers; the bytes are all here.
                0x95 => {
                    input.u64()?;
                }
                b'.' => return self.pop(),
                b'(' => {
                    if self.marks.len() >= MAX_OBJECTS {
                        return bad("nests MARKs too deeply");
                    }
                    self.marks.push(self.stack.len());
                }
                // POP: with nothing above the last MARK, Python drops the MARK.
                b'0' => {
                    let floor = self.marks.last().copied().unwrap_or(0);
                    if self.stack.len() == floor && !self.marks.is_empty() {
                        self.marks.pop();
                    } else {
                        self.pop()?;
                    }
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let id = self.top()?;
                    self.push(id)?;
                }
                b'N' => {
                    self.push_value(Value::None)?;
                }
                0x88 => {
                    self.push_value(Value::Bool(true))?;
                }
                0x89 => {
                    self.push_value(Value::Bool(false))?;
                }
                b'J' => {
                    let v = input.i32()?;
                    self.push_value(Value::Int(v.into()))?;
                }
                b'K' => {
                    let v = input.u8()?;
                    self.push_value(Value::Int(v.into()))?;
                }
                b'M' => {
                    let v = input.u16()?;
                    self.push_value(Value::Int(v.into()))?;
                }
                0x8a => {
                    let n = input.u8()?;
                    let v = long(input.take(n.into())?);
                    self.push_value(v)?;
                }
                0x8b => {
                    let n = input.i32()?;
                    let n = input.length(u64::try_from(n).unwrap_or(u64::MAX))?;
                    let v = long(input.take(n)?);
                    self.push_value(v)?;
                }
                b'G' => {
                    let v = f64::from_be_bytes(input.array()?);
                    self.push_value(Value::Float(v))?;
                }
                // Text: BINUNICODE, SHORT_BINUNICODE, BINUNICODE8.
                b'X' | 0x8c | 0x8d => {
                    let n = match op {
                        b'X' => input.u32()?.into(),
                        0x8c => input.u8()?.into(),
                        _ => input.u64()?,
                    };
                    let n = input.length(n)?;
                    let text = std::str::from_utf8(input.take(n)?)
                        .or_else(|_| bad("holds text that is not UTF-8"))?;
                    self.push_value(Value::Str(text.to_string()))?;
                }
                // Bytes: Python 2 str (SHORT_BINSTRING, BINSTRING), SHORT_BINBYTES, BINBYTES,
                // BINBYTES8, BYTEARRAY8.
                b'U' | b'T' | b'C' | b'B' | 0x8e | 0x96 => {
                    let n = match op {
                        b'U' | b'C' => input.u8()?.into(),
                        b'T' => u64::try_from(input.i32()?).unwrap_or(u64::MAX),
                        b'B' => input.u32()?.into(),
                        _ => input.u64()?,
                    };
                    let n = input.length(n)?;
                    let data = input.take(n)?.to_vec();
                    self.push_value(Value::Bytes(data))?;
                }
                b')' => {
                    self.push_value(Value::Tuple(Vec::new()))?;
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.push_value(Value::Tuple(items))?;
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    let mut items = vec![0; n];
                    for slot in items.iter_mut().rev() {
                        *slot = self.pop()?;
                    }
                    self.push_value(Value::Tuple(items))?;
                }
                b']' => {
                    self.push_value(Value::List(Vec::new()))?;
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push_value(Value::List(items))?;
                }
                b'a' => {
                    let item = self.pop()?;
                    self.extend(vec![item])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.extend(items)?;
                }
                // EMPTY_SET, ADDITEMS, FROZENSET: a set is read as the list of its items.
                0x8f => {
                    self.push_value(Value::List(Vec::new()))?;
                }
                0x90 => {
                    let items = self.pop_mark()?;
                    self.extend(items)?;
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    self.push_value(Value::List(items))?;
                }
                b'}' => {
                    self.push_value(Value::Dict(Vec::new()))?;
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    if items.len() % 2 != 0 {
                        return bad("builds a dict from an odd number of objects");
                    }
                    let pairs = items.chunks_exact(2).map(|kv| (kv[0], kv[1])).collect();
                    self.push_value(Value::Dict(pairs))?;
                }
                b's' => {
                    let value = self.pop()?;
                    let key = self.pop()?;
                    self.set_items(vec![(key, value)])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    if items.len() % 2 != 0 {
                        return bad("sets dict items from an odd number of objects");
                    }
                    self.set_items(items.chunks_exact(2).map(|kv| (kv[0], kv[1])).collect())?;
                }
                b'q' => {
                    let i = input.u8()?;
                    self.memo_put(i.into())?;
                }
                b'r' => {
                    let i = input.u32()?;
                    self.memo_put(i)?;
                }
                0x94 => {
                    let i = u32::try_from(self.memo.len())
                        .or_else(|_| bad("memoizes too many objects"))?;
                    self.memo_put(i)?;
                }
                b'h' => {
                    let i = input.u8()?;
                    self.memo_get(i.into())?;
                }
                b'j' => {
                    let i = input.u32()?;
                    self.memo_get(i)?;
                }
                b'c' => {
                    let module = input.line()?;
                    let name = input.line()?;
                    self.push_global(module, name)?;
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Some(module), Some(name)) = (self.text(module)?, self.text(name)?) else {
                        return bad("names a global by something that is not text");
                    };
                    self.push_global(&module, &name)?;
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = self.reduce(callable, args)?;
                    self.push_value(v)?;
                }
                0x81 => {
                    let args = self.pop()?;
                    let class = self.pop()?;
                    match (&self.values[class], &self.values[args]) {
                        (Value::Global(Global::OrderedDict), Value::Tuple(a)) if a.is_empty() => {
                            self.push_value(Value::Dict(Vec::new()))?;
                        }
                        _ => return bad("creates an object with NEWOBJ that no state_dict holds"),
                    }
                }
                b'b' => {
                    let state = self.pop()?;
                    let object = self.top()?;
                    self.build(object, state)?;
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent(pid)?;
                    self.push_value(v)?;
                }
                _ => {
                    return bad(format!(
                        "uses opcode 0x{op:02x} at offset {}, which no state_dict needs",
                        input.pos - 1
                    ))
                }
            }
        }
    }

    fn push_global(&mut self, module: &str, name: &str) -> Result<()> {
        match global(module, name) {
            Some(g) => self.push_value(Value::Global(g)).map(|_| ()),
            None => Err(PickleError::Refused(format!("{module}.{name}"))),
        }
    }

    fn extend(&mut self, items: Vec<Id>) -> Result<()> {
        let target = self.top()?;
        match &mut self.values[target] {
            Value::List(list) => {
                list.extend(items);
                Ok(())
            }
            _ => bad("appends to something that is not a list"),
        }
    }

    fn set_items(&mut self, pairs: Vec<(Id, Id)>) -> Result<()> {
        let target = self.top()?;
        match &mut self.values[target] {
            Value::Dict(items) => {
                items.extend(pairs);
                Ok(())
            }
            _ => bad("sets items of something that is not a dict"),
        }
    }

    /// A persistent id: PyTorch's `('storage', storage type, key, location, numel)`, and in
    /// the legacy format a sixth item, `None` or a view `(view key, offset, size)`.
    fn persistent(&mut self, pid: Id) -> Result<Value> {
        if self.storages == Storages::Refused {
            return bad(
                "refers to a storage outside the pickle, which only a PyTorch checkpoint does",
            );
        }
        let items = match &self.values[pid] {
            Value::Tuple(items) if items.len() == 5 || items.len() == 6 => items.clone(),
            _ => return bad("holds a persistent id that is not a PyTorch storage"),
        };
        if self.text(items[0])?.as_deref() != Some("storage") {
            return bad("holds a persistent id that is not a PyTorch storage");
        }
        let dtype = match self.values[items[1]] {
            Value::Global(Global::StorageType(d) | Global::TorchDtype(d)) => d,
            _ => return bad("holds a storage of no known element type"),
        };
        let Some(key) = self.text(items[2])? else {
            return bad("holds a storage whose key is not text");
        };
        let mut base = 0;
        if let Some(&view) = items.get(5) {
            match &self.values[view] {
                Value::None => {}
                Value::Tuple(v) if v.len() == 3 => {
                    base = self.size(v[1], "a storage view offset")?
                }
                _ => return bad("holds a storage view that is not (key, offset, size)"),
            }
        }
        Ok(Value::Storage(StorageRef { key, dtype, base }))
    }

    fn reduce(&mut self, callable: Id, args: Id) -> Result<Value> {
        let Value::Global(g) = self.values[callable] else {
            return bad("calls an object that is not a function");
        };
        let a = self.tuple(args, &format!("{g:?}"))?;
        let arg = |i: usize| -> Result<Id> {
            a.get(i).copied().ok_or_else(|| {
                PickleError::Malformed(format!("calls {g:?} with too few arguments"))
            })
        };
        match g {
            Global::OrderedDict => match a.len() {
                0 => Ok(Value::Dict(Vec::new())),
                1 => Ok(Value::Dict(self.pairs(a[0])?)),
                _ => bad("calls OrderedDict with more than one argument"),
            },
            Global::RebuildTensor => {
                // (storage, storage_offset, size, stride, ...); v3 puts the dtype 7th.
                let (key, base, storage_dtype) = match &self.values[arg(0)?] {
                    Value::Storage(s) => (s.key.clone(), s.base, s.dtype),
                    _ => return bad("rebuilds a tensor from something that is not a storage"),
                };
                let offset = self.size(arg(1)?, "a tensor offset")?;
                let shape = self.sizes(arg(2)?, "a tensor shape")?;
                let strides = self.sizes(arg(3)?, "tensor strides")?;
                if shape.len() != strides.len() {
                    return bad("rebuilds a tensor whose shape and strides differ in length");
                }
                let dtype = match a.get(6).map(|&d| &self.values[d]) {
                    Some(Value::Global(Global::TorchDtype(d))) => *d,
                    _ => storage_dtype,
                };
                Ok(Value::Tensor(TensorView {
                    data: Data::Storage { key, base },
                    dtype,
                    big_endian: false,
                    offset,
                    shape,
                    strides,
                }))
            }
            Global::RebuildParameter => match &self.values[arg(0)?] {
                t @ Value::Tensor(_) => Ok(t.clone()),
                _ => bad("rebuilds a parameter from something that is not a tensor"),
            },
            Global::NumpyReconstruct => match self.values[arg(0)?] {
                Value::Global(Global::NumpyNdarray) => Ok(Value::NumpyPending),
                _ => bad("reconstructs a numpy array of a class other than ndarray"),
            },
            Global::NumpyDtype => match self.text(arg(0)?)? {
                Some(code) => Ok(Value::NumpyDtype(numpy_dtype(&code))),
                None => bad("makes a numpy dtype from something that is not text"),
            },
            Global::NumpyScalar => {
                // scalar(dtype, bytes): a number in metadata, kept as one.
                let d = self.numpy_dtype_of(arg(0)?, "a numpy scalar")?;
                let mut b = self.data_bytes(arg(1)?)?.into_owned();
                if d.big_endian {
                    b.reverse();
                }
                let float = |b: &[u8]| match b.len() {
                    8 => b.try_into().ok().map(f64::from_le_bytes),
                    4 => b.try_into().ok().map(|b| f32::from_le_bytes(b).into()),
                    _ => None,
                };
                let int = |b: &[u8]| match b.len() {
                    8 => b.try_into().ok().map(|b| i64::from_le_bytes(b).into()),
                    4 => b.try_into().ok().map(|b| i32::from_le_bytes(b).into()),
                    _ => None,
                };
                Ok(match d.dtype {
                    Some(Dtype::F64 | Dtype::F32) => float(&b).map_or(Value::None, Value::Float),
                    Some(Dtype::I64 | Dtype::I32) => int(&b).map_or(Value::None, Value::Int),
                    _ => Value::None,
                })
            }
            Global::NumpyFromBuffer => {
                // _frombuffer(buffer, dtype, shape, order)
                let buffer = arg(0)?;
                if !matches!(self.values[buffer], Value::Bytes(_)) {
                    return bad("makes a numpy array from something that is not bytes");
                }
                let d = self.numpy_dtype_of(arg(1)?, "a numpy array")?;
                let shape = self.sizes(arg(2)?, "an array shape")?;
                let fortran = self.text(arg(3)?)?.as_deref() == Some("F");
                array(buffer, &d, shape, fortran)
            }
            Global::CodecsEncode => {
                let text = self.text(arg(0)?)?;
                let encoding = match a.get(1) {
                    Some(&e) => self.text(e)?,
                    None => None,
                };
                match (text, encoding.as_deref()) {
                    (Some(t), Some("latin1" | "latin-1")) => Ok(Value::Bytes(latin1(&t)?)),
                    _ => bad("calls _codecs.encode other than on text as latin-1"),
                }
            }
            Global::NumpyNdarray | Global::StorageType(_) | Global::TorchDtype(_) => {
                bad(format!("calls {g:?}, which no state_dict does"))
            }
        }
    }

    /// The bytes of a Bytes value, or of text holding bytes as latin-1 (numpy's arrays in
    /// pickles from Python 2, read with `encoding="latin1"`).
    fn data_bytes(&self, id: Id) -> Result<Cow<'_, [u8]>> {
        match &self.values[id] {
            Value::Bytes(b) => Ok(Cow::Borrowed(b)),
            Value::Str(s) => {
                self.charge(s.len())?;
                latin1(s).map(Cow::Owned)
            }
            _ => bad("gives array data that is not bytes"),
        }
    }

    fn build(&mut self, object: Id, state: Id) -> Result<()> {
        match &self.values[object] {
            // An OrderedDict's state is its attributes (a state_dict's `_metadata`): not
            // weights.
            Value::Dict(_) => Ok(()),
            // numpy's dtype state: (version, byte order, ...).
            Value::NumpyDtype(_) => {
                let items = self.tuple(state, "a numpy dtype's state")?;
                let big_endian = match items.get(1) {
                    Some(&o) => self.text(o)?.as_deref() == Some(">"),
                    None => false,
                };
                if let Value::NumpyDtype(d) = &mut self.values[object] {
                    d.big_endian = big_endian;
                }
                Ok(())
            }
            // numpy's array state: ([version,] shape, dtype, is_fortran, data).
            Value::NumpyPending => {
                let mut items = self.tuple(state, "a numpy array's state")?;
                if items.len() == 5 {
                    items.remove(0);
                }
                let [shape, dtype, fortran, data] = items[..] else {
                    return bad(
                        "gives a numpy array a state that is not (shape, dtype, order, data)",
                    );
                };
                let shape = self.sizes(shape, "an array shape")?;
                let d = self.numpy_dtype_of(dtype, "an array")?;
                let fortran = matches!(self.values[fortran], Value::Bool(true) | Value::Int(1));
                let buffer = match &self.values[data] {
                    Value::Bytes(_) => data,
                    Value::Str(_) => {
                        let bytes = self.data_bytes(data)?.into_owned();
                        self.alloc(Value::Bytes(bytes))?
                    }
                    Value::List(_) => {
                        return bad(format!(
                        "holds a numpy array of Python objects (dtype `{}`), which no weights are",
                        d.code
                    ))
                    }
                    _ => return bad("gives a numpy array data that is not bytes"),
                };
                self.values[object] = array(buffer, &d, shape, fortran)?;
                Ok(())
            }
            _ => bad("sets the state of an object that no state_dict holds"),
        }
    }
}

/// A numpy array over the bytes `buffer`: C order, or Fortran order (column-major).
fn array(buffer: Id, d: &NumpyDtype, shape: Vec<usize>, fortran: bool) -> Result<Value> {
    let Some(dtype) = d.dtype else {
        return bad(format!(
            "holds a numpy array of dtype `{}`, which no weights have",
            d.code
        ));
    };
    let mut strides = vec![0; shape.len()];
    let mut step = 1usize;
    let order: Vec<usize> = if fortran {
        (0..shape.len()).collect()
    } else {
        (0..shape.len()).rev().collect()
    };
    for i in order {
        strides[i] = step;
        step = step.saturating_mul(shape[i].max(1));
    }
    Ok(Value::Tensor(TensorView {
        data: Data::Inline(buffer),
        dtype,
        big_endian: d.big_endian && element_size(dtype) > 1,
        offset: 0,
        shape,
        strides,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(bytes: &[u8]) -> Result<Pickle> {
        parse(bytes, Storages::Allowed).map(|(p, _)| p)
    }

    #[test]
    fn a_memoized_dict_is_the_same_object_when_fetched_again() {
        // d = {}; x = [d, d]; d["a"] = 1, pickled with d memoized before it is filled.
        let bytes = b"\x80\x02}q\x00(X\x01\x00\x00\x00aK\x01u]q\x01(h\x00h\x00e0h\x01.";
        let p = read(bytes).unwrap();
        let Value::List(items) = p.get(p.root) else {
            panic!()
        };
        assert_eq!(items.len(), 2);
        assert_eq!(items[0], items[1]);
        assert_eq!(p.dict(items[0]).unwrap().len(), 1);
    }

    #[test]
    fn a_global_outside_the_allow_list_is_refused_by_name() {
        let bytes = b"\x80\x02cposix\nsystem\nX\x02\x00\x00\x00lsq\x00\x85R.";
        assert_eq!(
            read(bytes).unwrap_err(),
            PickleError::Refused("posix.system".into())
        );
        let bytes = b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93.";
        assert_eq!(
            read(bytes).unwrap_err(),
            PickleError::Refused("builtins.eval".into())
        );
    }

    #[test]
    fn ints_of_any_width_and_the_legacy_magic_number() {
        let magic = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.";
        let p = read(magic).unwrap();
        assert_eq!(p.get(p.root), &Value::Int(0x1950a86a20f9469cfc6c));
        let p = read(b"\x80\x02\x8a\x01\xff.").unwrap();
        assert_eq!(p.get(p.root), &Value::Int(-1));
        let p = read(b"\x80\x02\x8a\x11\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00.").unwrap();
        assert_eq!(p.get(p.root), &Value::BigInt);
    }

    #[test]
    fn lengths_past_the_end_and_stray_marks_are_errors() {
        for bytes in [
            &b"\x80\x02X\xff\xff\xff\x7fabc."[..],
            b"\x80\x02\x8d\xff\xff\xff\xff\xff\xff\xff\xff.",
            b"\x80\x02(t(.",
            b"\x80\x02e.",
            b"\x80\x02h\x05.",
            b"\x80\x02.",
            b"",
            b"\x80\x06N.",
            b"\x80\x02N",
        ] {
            assert!(
                matches!(read(bytes), Err(PickleError::Malformed(_))),
                "{bytes:?}"
            );
        }
    }

    #[test]
    fn numpy_codes_and_byte_orders() {
        assert_eq!(numpy_dtype("<f4").dtype, Some(Dtype::F32));
        assert!(numpy_dtype(">f8").big_endian);
        assert_eq!(numpy_dtype("O8").dtype, None);
        assert_eq!(numpy_dtype("c8").dtype, None);
    }
}
