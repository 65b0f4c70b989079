// LmdbTxn: small helpers for LMDB calls in the disk tier — errors as exceptions, a write
// transaction that aborts unless committed, byte views in and out of MDB_val, and cursor scans.
// Header-only; each helper is a call or two into LMDB.
#pragma once

#include <lmdb.h>

#include <cstddef>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace unherd::disk {

struct LmdbError : std::runtime_error {
  LmdbError(const char* what, int rc)
      : std::runtime_error(std::string(what) + ": " + mdb_strerror(rc)), code(rc) {}
  int code;
};

// Throws LmdbError naming `what` unless rc is 0.
inline void check(int rc, const char* what) {
  if (rc != 0) throw LmdbError(what, rc);
}

// Whether rc says LMDB found the store's own pages damaged while running (as opposed to an error
// of the world around it: a full disk, a full map).
inline bool damaged(int rc) {
  return rc == MDB_CORRUPTED || rc == MDB_PAGE_NOTFOUND || rc == MDB_PANIC;
}

// A write transaction that aborts unless committed.
class WriteTxn {
 public:
  explicit WriteTxn(MDB_env* env) { check(mdb_txn_begin(env, nullptr, 0, &txn_), "begin"); }
  ~WriteTxn() {
    if (txn_) mdb_txn_abort(txn_);
  }
  WriteTxn(const WriteTxn&) = delete;
  WriteTxn& operator=(const WriteTxn&) = delete;
  MDB_txn* get() const { return txn_; }
  void commit() {
    MDB_txn* t = std::exchange(txn_, nullptr);
    check(mdb_txn_commit(t), "commit");
  }

 private:
  MDB_txn* txn_ = nullptr;
};

// Views: the bytes must outlive the MDB_val (never pass a temporary string).
MDB_val val(std::string&&) = delete;
inline MDB_val val(const std::string& s) {
  return MDB_val{s.size(), const_cast<char*>(s.data())};
}
inline MDB_val val(std::string_view s) {
  return MDB_val{s.size(), const_cast<char*>(s.data())};
}
inline std::string_view view(const MDB_val& v) {
  return {static_cast<const char*>(v.mv_data), v.mv_size};
}

// Deletes `key` from `dbi`; a key that is not there is no error.
inline void del(MDB_txn* txn, MDB_dbi dbi, std::string_view key) {
  MDB_val k = val(key);
  const int rc = mdb_del(txn, dbi, &k, nullptr);
  if (rc != MDB_NOTFOUND) check(rc, "delete");
}

// The first `limit` keys of a database, in order, and their values.
inline std::vector<std::pair<std::string, std::string>> first(MDB_txn* txn, MDB_dbi dbi,
                                                              std::size_t limit) {
  std::vector<std::pair<std::string, std::string>> out;
  MDB_cursor* cur = nullptr;
  check(mdb_cursor_open(txn, dbi, &cur), "cursor");
  MDB_val k{}, v{};
  for (int rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0 && out.size() < limit;
       rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
    out.emplace_back(view(k), view(v));
  }
  mdb_cursor_close(cur);
  return out;
}

}  // namespace unherd::disk
