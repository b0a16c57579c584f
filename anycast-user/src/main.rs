fn main() {
    println!("{}", anycast_user::object::ANYCAST.len());
}
