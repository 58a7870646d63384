// Background-error listener and DB::Resume for the store (see bgerror.go for
// why).

#include <rocksdb/db.h>
#include <rocksdb/listener.h>
#include <rocksdb/options.h>
#include <stdlib.h>
#include <string.h>

#include <memory>
#include <mutex>
#include <string>

#include "bgerror.h"

// The C++ objects inside the C API's handles; bgerror.go checks the layouts
// at run time before using them.
#include "rocksabi.h"

namespace {

class Listener : public rocksdb::EventListener {
 public:
  const char* Name() const override { return "singularity-edge.BackgroundError"; }

  // RocksDB asks every background error's listeners before it records the
  // error; one it will ignore (severity kNoError) stops nothing.
  //
  // Without paranoid checks RocksDB ignores a failed flush: the memtables
  // it could not write stay in memory, no flush is scheduled again, and
  // once they fill every write, and every flush that waits (Close's), waits
  // forever. A failed flush is made a hard error instead: writes fail with
  // it until DB::Resume flushes again. Paranoid checks would do the same
  // but also make a commit's failed WAL write stop every later one, and
  // make open fail on any damaged table file without naming the table.
  void OnBackgroundError(rocksdb::BackgroundErrorReason reason, rocksdb::Status* err) override {
    if (err == nullptr || err->ok()) return;
    if ((reason == rocksdb::BackgroundErrorReason::kFlush || reason == rocksdb::BackgroundErrorReason::kFlushNoWAL) &&
        err->severity() < rocksdb::Status::Severity::kHardError) {
      *err = rocksdb::Status(*err, rocksdb::Status::Severity::kHardError);
    }
    if (err->severity() == rocksdb::Status::Severity::kNoError) return;
    std::lock_guard<std::mutex> l(mu_);
    err_ = err->ToString();
    count_++;
  }

  // RocksDB's own recovery from a full disk waits until the free space
  // exceeds the largest write buffer, checking every 5 s, and meanwhile
  // refuses DB::Resume as "in progress". On a small volume that space
  // never comes back while the WAL holds its preallocation, so the store
  // resumes by itself instead (bgerror.go).
  void OnErrorRecoveryBegin(rocksdb::BackgroundErrorReason, rocksdb::Status, bool* auto_recovery) override {
    if (auto_recovery != nullptr) *auto_recovery = false;
  }

  // Called when DB::Resume (or RocksDB's own recovery) ends: the error is
  // cleared when the recovery succeeded.
  void OnErrorRecoveryEnd(const rocksdb::BackgroundErrorRecoveryInfo& info) override {
    std::lock_guard<std::mutex> l(mu_);
    err_ = info.new_bg_error.ok() ? "" : info.new_bg_error.ToString();
  }

  char* Get() {
    std::lock_guard<std::mutex> l(mu_);
    return err_.empty() ? nullptr : strdup(err_.c_str());
  }

  size_t Count() {
    std::lock_guard<std::mutex> l(mu_);
    return count_;
  }

 private:
  std::mutex mu_;
  std::string err_;
  size_t count_ = 0;
};

struct Watch {
  std::shared_ptr<Listener> listener;
};

}  // namespace

extern "C" void* edge_bgerror_watch(void* opts) {
  auto* w = new Watch{std::make_shared<Listener>()};
  static_cast<rocksdb_options_t*>(opts)->rep.listeners.push_back(w->listener);
  return w;
}

extern "C" void edge_bgerror_watch_destroy(void* watch) { delete static_cast<Watch*>(watch); }

extern "C" char* edge_bgerror_get(void* watch) { return static_cast<Watch*>(watch)->listener->Get(); }

extern "C" size_t edge_bgerror_count(void* watch) { return static_cast<Watch*>(watch)->listener->Count(); }

extern "C" const char* edge_db_name(void* db) { return static_cast<rocksdb_t*>(db)->rep->GetName().c_str(); }

extern "C" char* edge_db_resume(void* db) {
  rocksdb::Status s = static_cast<rocksdb_t*>(db)->rep->Resume();
  return s.ok() ? nullptr : strdup(s.ToString().c_str());
}

