#include "io/torch_bin.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <unordered_map>

#include "core/error.h"

namespace stdit {

namespace {

// --- values of the restricted pickle machine ----------------------------------------------------
struct Value;
using VP = std::shared_ptr<Value>;
struct Value {
  enum Kind { None, Bool, Int, Float, Str, Tuple, List, Dict, Global, Storage, TensorV, Mark } kind;
  int64_t i = 0;
  double f = 0;
  std::string s;                         // Str; Global "module.name"; Storage key
  std::vector<VP> items;                 // Tuple, List; Dict as key, value, key, value...
  DType dtype = DType::F32;              // Storage
  TorchBinFile::TensorRef tensor;        // TensorV
  int depth = 1;
};

VP make(Value::Kind k) {
  auto v = std::make_shared<Value>();
  v->kind = k;
  return v;
}

const std::map<std::string, DType>& storage_types() {
  static const std::map<std::string, DType> m = {
      {"torch.FloatStorage", DType::F32},  {"torch.HalfStorage", DType::F16},
      {"torch.BFloat16Storage", DType::BF16}, {"torch.DoubleStorage", DType::F64},
      {"torch.LongStorage", DType::I64},   {"torch.IntStorage", DType::I32},
      {"torch.ShortStorage", DType::I16},  {"torch.CharStorage", DType::I8},
      {"torch.ByteStorage", DType::U8},    {"torch.BoolStorage", DType::BOOL}};
  return m;
}

bool allowed_global(const std::string& g) {
  return g == "collections.OrderedDict" || g == "torch._utils._rebuild_tensor_v2" ||
         g == "torch._utils._rebuild_parameter" || storage_types().count(g);
}

class Unpickler {
 public:
  Unpickler(const std::string& where, const uint8_t* p, size_t n) : w_(where), p_(p), n_(n) {}
  // Every value is owned by all_ as well as by its parents; unlinking the children first frees
  // values one by one, so cycles built through the memo (A=[B], B=[A]) are not leaked and long
  // chains (a list appended to after it was nested, which the depth bookkeeping cannot see) are
  // not freed recursively. Values returned by run() are valid until the Unpickler is destroyed.
  ~Unpickler() {
    for (const auto& v : all_) v->items.clear();
  }
  Unpickler(const Unpickler&) = delete;
  Unpickler& operator=(const Unpickler&) = delete;

  VP run() {
    while (true) {
      const uint8_t op = byte();
      switch (op) {
        case 0x80: byte(); break;                                     // PROTO
        case 0x95: take(8); break;                                    // FRAME
        case '}': push(mk(Value::Dict)); break;                     // EMPTY_DICT
        case ']': push(mk(Value::List)); break;                     // EMPTY_LIST
        case ')': push(mk(Value::Tuple)); break;                    // EMPTY_TUPLE
        case 'N': push(mk(Value::None)); break;
        case 0x88: case 0x89: { auto v = mk(Value::Bool); v->i = op == 0x88; push(v); break; }
        case 'K': push_int(uint_le(1)); break;                        // BININT1
        case 'M': push_int(uint_le(2)); break;                        // BININT2
        case 'J': push_int(static_cast<int32_t>(uint_le(4))); break;  // BININT
        case 0x8a: {                                                  // LONG1
          const size_t len = byte();
          STDIT_CHECK(len <= 8, w_, "pickle integer of ", len, " bytes is too large");
          const uint8_t* b = take(len);
          uint64_t u = 0;
          for (size_t i = len; i-- > 0;) u = (u << 8) | b[i];
          if (len > 0 && len < 8 && (b[len - 1] & 0x80)) u |= ~uint64_t{0} << (8 * len);
          push_int(static_cast<int64_t>(u));
          break;
        }
        case 'G': {                                                   // BINFLOAT (big endian)
          const uint8_t* b = take(8);
          uint64_t u = 0;
          for (int i = 0; i < 8; ++i) u = (u << 8) | b[i];
          auto v = mk(Value::Float);
          std::memcpy(&v->f, &u, 8);
          push(v);
          break;
        }
        case 'X': push_str(uint_le(4)); break;                        // BINUNICODE
        case 0x8c: push_str(byte()); break;                           // SHORT_BINUNICODE
        case 'c': {                                                   // GLOBAL "module\nname\n"
          const std::string mod = line(), name = line();
          push_global(mod + "." + name);
          break;
        }
        case 0x93: {                                                  // STACK_GLOBAL
          VP name = pop(), mod = pop();
          STDIT_CHECK(mod->kind == Value::Str && name->kind == Value::Str, w_,
                      "pickle STACK_GLOBAL needs two strings");
          push_global(mod->s + "." + name->s);
          break;
        }
        case '(': push(mk(Value::Mark)); break;                     // MARK
        case 't': { auto v = mk(Value::Tuple); v->items = pop_mark(); push(finish(v)); break; }
        case 0x85: tuple_n(1); break;
        case 0x86: tuple_n(2); break;
        case 0x87: tuple_n(3); break;
        case 'q': memo_put(byte()); break;                            // BINPUT
        case 'r': memo_put(uint_le(4)); break;                        // LONG_BINPUT
        case 0x94: memo_put(memo_.size()); break;                     // MEMOIZE
        case 'h': memo_get(byte()); break;                            // BINGET
        case 'j': memo_get(uint_le(4)); break;                        // LONG_BINGET
        case 'a': { VP x = pop(); append(top(), {x}); break; }        // APPEND
        case 'e': { auto xs = pop_mark(); append(top(), xs); break; } // APPENDS
        case 's': { VP v = pop(), k = pop(); setitems(top(), {k, v}); break; }  // SETITEM
        case 'u': { auto kv = pop_mark(); setitems(top(), kv); break; }         // SETITEMS
        case 'Q': persistent_id(); break;                             // BINPERSID
        case 'R': reduce(); break;                                    // REDUCE
        case 'b': {                                                   // BUILD: state ignored
          pop();
          STDIT_CHECK(top()->kind == Value::Dict, w_, "pickle BUILD applies to something other "
                      "than the state_dict's OrderedDict; refusing to load");
          break;
        }
        case '.': {                                                   // STOP
          STDIT_CHECK(stack_.size() == 1, w_, "pickle stops with ", stack_.size(), " values on the stack");
          return stack_.back();
        }
        default:
          fail(w_, "pickle opcode 0x", hex(op), " at byte ", pos_ - 1,
               " is not one a state_dict of tensors uses; refusing to load (this loader never "
               "executes code from checkpoints)");
      }
    }
  }

 private:
  static std::string hex(uint8_t b) {
    const char* d = "0123456789abcdef";
    return {d[b >> 4], d[b & 15]};
  }
  const uint8_t* take(size_t k) {
    STDIT_CHECK(k <= n_ - pos_, w_, "pickle data ends early (truncated checkpoint?)");
    const uint8_t* r = p_ + pos_;
    pos_ += k;
    return r;
  }
  uint8_t byte() { return *take(1); }
  uint64_t uint_le(int k) {
    const uint8_t* b = take(k);
    uint64_t v = 0;
    for (int i = k - 1; i >= 0; --i) v = (v << 8) | b[i];
    return v;
  }
  std::string line() {
    std::string s;
    while (true) {
      const char c = static_cast<char>(byte());
      if (c == '\n') return s;
      STDIT_CHECK(s.size() < 256, w_, "pickle GLOBAL name is too long");
      s += c;
    }
  }
  void push(VP v) {
    STDIT_CHECK(stack_.size() < kPickleMaxStack, w_, "pickle stack exceeds ", kPickleMaxStack, " entries");
    stack_.push_back(std::move(v));
  }
  void push_int(int64_t i) { auto v = mk(Value::Int); v->i = i; push(v); }
  void push_str(uint64_t len) {
    auto v = mk(Value::Str);
    const uint8_t* b = take(len);
    v->s.assign(reinterpret_cast<const char*>(b), len);
    push(v);
  }
  void push_global(const std::string& g) {
    STDIT_CHECK(allowed_global(g), w_, "pickle references '", g,
                "', which a state_dict of tensors never needs; refusing to load (this loader "
                "never executes code from checkpoints)");
    auto v = mk(Value::Global);
    v->s = g;
    push(v);
  }
  VP pop() {
    STDIT_CHECK(!stack_.empty() && stack_.back()->kind != Value::Mark, w_, "pickle stack underflow");
    VP v = stack_.back();
    stack_.pop_back();
    return v;
  }
  VP top() {
    STDIT_CHECK(!stack_.empty(), w_, "pickle stack underflow");
    return stack_.back();
  }
  std::vector<VP> pop_mark() {
    size_t m = stack_.size();
    while (m > 0 && stack_[m - 1]->kind != Value::Mark) --m;
    STDIT_CHECK(m > 0, w_, "pickle MARK missing");
    std::vector<VP> xs(stack_.begin() + m, stack_.end());
    stack_.resize(m - 1);
    return xs;
  }
  // Sets depth from children; refuses deep nesting (bounds recursion when values are freed).
  VP finish(VP v) {
    for (const auto& c : v->items) v->depth = std::max(v->depth, c->depth + 1);
    STDIT_CHECK(v->depth <= kPickleMaxDepth, w_, "pickle nests deeper than ", kPickleMaxDepth, " levels");
    return v;
  }
  void tuple_n(int k) {
    auto v = mk(Value::Tuple);
    v->items.resize(k);
    for (int i = k - 1; i >= 0; --i) v->items[i] = pop();
    push(finish(v));
  }
  void memo_put(uint64_t idx) {
    STDIT_CHECK(memo_.size() < kPickleMaxMemo || memo_.count(idx), w_, "pickle memo exceeds ",
                kPickleMaxMemo, " entries");
    memo_[idx] = top();
  }
  void memo_get(uint64_t idx) {
    auto it = memo_.find(idx);
    STDIT_CHECK(it != memo_.end(), w_, "pickle refers to memo entry ", idx, " that was never stored");
    push(it->second);
  }
  void append(const VP& list, const std::vector<VP>& xs) {
    STDIT_CHECK(list->kind == Value::List, w_, "pickle APPEND to a non-list");
    for (const auto& x : xs) {
      STDIT_CHECK(x.get() != list.get(), w_, "pickle builds a self-referencing list");
      list->items.push_back(x);
      list->depth = std::max(list->depth, x->depth + 1);
    }
    STDIT_CHECK(list->depth <= kPickleMaxDepth, w_, "pickle nests too deeply");
  }
  void setitems(const VP& dict, const std::vector<VP>& kv) {
    STDIT_CHECK(dict->kind == Value::Dict, w_, "pickle SETITEM on a non-dict");
    STDIT_CHECK(kv.size() % 2 == 0, w_, "pickle SETITEMS with an odd number of values");
    for (const auto& x : kv) {
      STDIT_CHECK(x.get() != dict.get(), w_, "pickle builds a self-referencing dict");
      dict->items.push_back(x);
      dict->depth = std::max(dict->depth, x->depth + 1);
    }
    STDIT_CHECK(dict->depth <= kPickleMaxDepth, w_, "pickle nests too deeply");
  }
  // ('storage', <torch.XStorage>, key, location, numel)
  void persistent_id() {
    VP pid = pop();
    STDIT_CHECK(pid->kind == Value::Tuple && pid->items.size() == 5 &&
                    pid->items[0]->kind == Value::Str && pid->items[0]->s == "storage" &&
                    pid->items[1]->kind == Value::Global && pid->items[2]->kind == Value::Str &&
                    pid->items[4]->kind == Value::Int && pid->items[4]->i >= 0,
                w_, "pickle persistent id is not a PyTorch storage reference");
    auto it = storage_types().find(pid->items[1]->s);
    STDIT_CHECK(it != storage_types().end(), w_, "pickle storage type '", pid->items[1]->s, "' is not a storage");
    auto v = mk(Value::Storage);
    v->s = pid->items[2]->s;
    v->dtype = it->second;
    v->i = pid->items[4]->i;
    push(v);
  }
  static bool int_tuple(const VP& t, Shape* out) {
    if (t->kind != Value::Tuple) return false;
    out->clear();
    for (const auto& x : t->items) {
      if (x->kind != Value::Int || x->i < 0) return false;
      out->push_back(x->i);
    }
    return true;
  }
  void reduce() {
    VP args = pop(), fn = pop();
    STDIT_CHECK(fn->kind == Value::Global && args->kind == Value::Tuple, w_,
                "pickle REDUCE of something other than an allowed function; refusing to load");
    const auto& a = args->items;
    if (fn->s == "collections.OrderedDict") {
      STDIT_CHECK(a.empty(), w_, "pickle builds an OrderedDict with arguments");
      push(mk(Value::Dict));
    } else if (fn->s == "torch._utils._rebuild_tensor_v2") {
      auto v = mk(Value::TensorV);
      STDIT_CHECK(a.size() >= 4 && a[0]->kind == Value::Storage && a[1]->kind == Value::Int &&
                      a[1]->i >= 0 && int_tuple(a[2], &v->tensor.shape) &&
                      int_tuple(a[3], &v->tensor.strides) &&
                      v->tensor.shape.size() == v->tensor.strides.size() && v->tensor.shape.size() <= 16,
                  w_, "pickle _rebuild_tensor_v2 arguments are malformed");
      v->tensor.dtype = a[0]->dtype;
      v->tensor.storage_key = a[0]->s;
      v->tensor.storage_numel = static_cast<uint64_t>(a[0]->i);
      v->tensor.offset = a[1]->i;
      push(v);
    } else if (fn->s == "torch._utils._rebuild_parameter") {
      STDIT_CHECK(!a.empty() && a[0]->kind == Value::TensorV, w_, "pickle _rebuild_parameter without a tensor");
      push(a[0]);
    } else {
      fail(w_, "pickle calls '", fn->s, "'; refusing to load");
    }
  }

  std::string w_;
  const uint8_t* p_;
  size_t n_, pos_ = 0;
  std::vector<VP> stack_;
  std::unordered_map<uint64_t, VP> memo_;
  std::vector<VP> all_;  // every value made, see ~Unpickler
  VP mk(Value::Kind k) {
    STDIT_CHECK(all_.size() < kPickleMaxValues, w_, "pickle builds more than ", kPickleMaxValues,
                " values");
    all_.push_back(make(k));
    return all_.back();
  }
};

struct Mapping {
  void* addr = nullptr;
  size_t size = 0;
  ~Mapping() {
    if (addr && addr != MAP_FAILED) munmap(addr, size);
  }
};

}  // namespace

std::shared_ptr<TorchBinFile> TorchBinFile::open(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  STDIT_CHECK(fs::is_regular_file(path, ec), path, ": no such file");
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  STDIT_CHECK(fd >= 0, path, ": cannot open: ", std::strerror(errno));
  struct stat st {};
  auto map = std::make_shared<Mapping>();
  if (fstat(fd, &st) == 0 && st.st_size > 0) {
    map->size = static_cast<size_t>(st.st_size);
    map->addr = mmap(nullptr, map->size, PROT_READ, MAP_PRIVATE, fd, 0);
  }
  ::close(fd);
  STDIT_CHECK(map->addr != MAP_FAILED, path, ": cannot mmap");
  return parse(path, static_cast<const uint8_t*>(map->addr), map->size, map);
}

std::shared_ptr<TorchBinFile> TorchBinFile::parse(const std::string& label, const uint8_t* bytes,
                                                  size_t size, std::shared_ptr<void> owner) {
  auto f = std::shared_ptr<TorchBinFile>(new TorchBinFile());
  f->path_ = label;
  f->owner_ = std::move(owner);
  STDIT_CHECK(size < 1 || bytes[0] != 0x80, label,
              ": this is a legacy (pre-1.6, non-zip) PyTorch file; re-save it with torch.save or "
              "convert it to safetensors");
  f->zip_ = std::make_unique<ZipArchive>(label, bytes, size);
  const std::string where = label + ": ";
  for (const auto& [name, e] : f->zip_->entries()) {
    (void)e;
    const auto slash = name.find('/');
    if (slash != std::string::npos && name.substr(slash + 1) == "data.pkl") {
      STDIT_CHECK(f->prefix_.empty(), where, "archive holds more than one data.pkl");
      f->prefix_ = name.substr(0, slash + 1);
    }
  }
  STDIT_CHECK(!f->prefix_.empty(), where, "zip archive has no data.pkl: not a PyTorch checkpoint");
  const auto* pkl = f->zip_->find(f->prefix_ + "data.pkl");
  Unpickler unpickler(where, f->zip_->data(*pkl), pkl->size);  // owns the values
  VP root = unpickler.run();
  STDIT_CHECK(root->kind == Value::Dict, where, "checkpoint is not a state_dict (a dict of tensors)");
  for (size_t i = 0; i + 1 < root->items.size(); i += 2) {
    const VP& k = root->items[i];
    const VP& v = root->items[i + 1];
    STDIT_CHECK(k->kind == Value::Str, where, "state_dict key is not a string");
    STDIT_CHECK(v->kind == Value::TensorV, where, "state_dict entry '", k->s, "' is not a tensor");
    TensorRef t = v->tensor;
    // The tensor's extent must lie inside its storage, and the storage inside the archive.
    const auto* entry = f->zip_->find(f->prefix_ + "data/" + t.storage_key);
    STDIT_CHECK(entry, where, "tensor '", k->s, "' refers to storage '", t.storage_key,
                "' which the archive lacks (truncated?)");
    uint64_t bytes_needed = 0;
    STDIT_CHECK(!__builtin_mul_overflow(t.storage_numel, dtype_size(t.dtype), &bytes_needed) &&
                    bytes_needed == entry->size,
                where, "storage '", t.storage_key, "' holds ", entry->size, " bytes, expected ",
                t.storage_numel, " x ", dtype_size(t.dtype));
    uint64_t last = static_cast<uint64_t>(t.offset);
    bool empty = false;
    for (size_t d = 0; d < t.shape.size(); ++d) {
      if (t.shape[d] == 0) empty = true;
      uint64_t span = 0;
      STDIT_CHECK(t.shape[d] <= (1ll << 48) && t.strides[d] <= (1ll << 48) &&
                      !__builtin_mul_overflow(static_cast<uint64_t>(t.shape[d] > 0 ? t.shape[d] - 1 : 0),
                                              static_cast<uint64_t>(t.strides[d]), &span) &&
                      !__builtin_add_overflow(last, span, &last),
                  where, "tensor '", k->s, "' has an impossible shape/stride");
    }
    STDIT_CHECK(empty || last < t.storage_numel, where, "tensor '", k->s,
                "' reaches beyond its storage (corrupt checkpoint)");
    STDIT_CHECK(f->tensors_.emplace(k->s, t).second, where, "state_dict names '", k->s, "' twice");
    f->order_.push_back(k->s);
  }
  return f;
}

std::vector<TensorEntry> TorchBinFile::entries() const {
  std::vector<TensorEntry> out;
  for (const auto& n : order_) {
    const auto& t = tensors_.at(n);
    out.push_back({n, t.dtype, t.shape});
  }
  return out;
}

Tensor TorchBinFile::get(const std::string& name) const {
  auto it = tensors_.find(name);
  STDIT_CHECK(it != tensors_.end(), path_, ": no tensor named '", name, "'");
  const TensorRef& t = it->second;
  const auto* entry = zip_->find(prefix_ + "data/" + t.storage_key);
  const size_t es = dtype_size(t.dtype);
  auto* base = const_cast<uint8_t*>(zip_->data(*entry)) + t.offset * es;
  Tensor view = Tensor::from_blob(base, t.shape, t.dtype, owner_);
  if (t.strides == contiguous_strides(t.shape) && reinterpret_cast<uintptr_t>(base) % es == 0)
    return view;
  // Non-contiguous or misaligned: copy element by element into a packed tensor.
  Tensor out = Tensor::empty(t.shape, t.dtype);
  for_each_offset(t.shape, t.strides, [&](int64_t flat, int64_t off) {
    std::memcpy(static_cast<uint8_t*>(out.raw()) + flat * es, base + off * static_cast<int64_t>(es), es);
  });
  return out;
}

}  // namespace stdit
